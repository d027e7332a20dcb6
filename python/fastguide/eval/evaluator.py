"""`fastguide eval REF.npz SAMPLE.npz`: the five numbers of guided-diffusion's
evaluations/evaluator.py (Inception Score, FID, sFID, precision, recall), computed as it computes
them, in PyTorch, from the same InceptionV3 graph (fastguide.eval.inception).

What "as it computes them" means, step by step:
- activations: pool_3 [N, 2048] and mixed_6/conv[..., :7] [N, 2023] (NHWC order) of the uint8
  images fed as float 0..255, in batches of 64, in float32 (TF32 off on GPUs);
- statistics: mu = mean in float32, sigma = np.cov (float64, N − 1); a batch's stored mu, sigma,
  mu_s, sigma_s are used instead when present (the published reference batches have them);
- FID and sFID: |mu1 − mu2|² + tr(sigma1 + sigma2 − 2 (sigma1 sigma2)^½). The evaluator takes
  the root with scipy's sqrtm; fastguide.eval.metrics.frechet_distance takes it from symmetric
  eigendecompositions, the same number for full-rank covariances (to ~1e-9 relative, tested)
  and a stable one for rank-deficient ones, where sqrtm's answer is unreliable;
- Inception Score: softmax(pool_3 · W) with the graph's softmax/weights and no bias, in splits
  of 5000 images in file order, exp(mean KL(p(y|x) ‖ p(y))) per split, then the mean over the
  splits (the evaluator reports no std);
- precision and recall: fastguide.eval.manifold (k = 3, float16 squared distances in blocks of
  10000, ties inside), on the pool_3 features, the reference batch as the reference.
"""
import contextlib
import os
import hashlib
import json
import math
import pathlib
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from .inception import SPATIAL_CHANNELS, InceptionWeightsError, load_inception
from .manifold import BLOCK, manifold_precision_recall
from .metrics import frechet_distance
from .ref_batch import BatchError, open_batch

__all__ = ["evaluate", "evaluator_metrics", "compute_activations", "statistics",
           "inception_score_from_pool",
           "add_arguments", "main", "SPLIT_SIZE", "NEAREST_K"]

BATCH_SIZE = 64          # Evaluator(batch_size=64)
SOFTMAX_BATCH = 512      # Evaluator(softmax_batch_size=512)
SPLIT_SIZE = 5000        # compute_inception_score(split_size=5000)
NEAREST_K = 3            # ManifoldEstimator(nhood_sizes=(3,))
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
INCEPTION_ENV = "FASTGUIDE_INCEPTION"


@contextlib.contextmanager
def _full_fp32():
    """TensorFlow's evaluator ran its convolutions in true float32: no TF32 on Ampere+ GPUs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def compute_activations(net, batch, batch_size=BATCH_SIZE, device="cpu", progress=True,
                        desc=None):
    """(pool [N, 2048], spatial [N, 2023]) float32 arrays of an ImageBatch."""
    pools, spatials = [], []
    total = math.ceil(len(batch) / batch_size)
    with _full_fp32():
        for images in tqdm(batch.batches(batch_size), total=total, disable=not progress,
                           desc=desc, unit="batch"):
            x = torch.from_numpy(images.copy()).to(device).permute(0, 3, 1, 2)
            out = net(x)
            pools.append(out["pool"].float().cpu().numpy())
            spatials.append(out["spatial"].float().cpu().numpy())
    return np.concatenate(pools), np.concatenate(spatials)


def statistics(activations):
    """(mu, sigma) as the evaluator's compute_statistics: a float32 mean, np.cov's float64."""
    return np.mean(activations, axis=0), np.cov(activations, rowvar=False)


def inception_score_from_pool(pool, weights, split_size=SPLIT_SIZE):
    """The evaluator's compute_inception_score: pool [N, 2048], weights = fc.weight [K, 2048]."""
    w = torch.as_tensor(weights, dtype=torch.float32).cpu()
    pool = torch.as_tensor(pool, dtype=torch.float32)
    preds = np.concatenate([torch.softmax(pool[i:i + SOFTMAX_BATCH] @ w.t(), dim=1).numpy()
                            for i in range(0, len(pool), SOFTMAX_BATCH)])
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        log_ratio = np.log(np.where(part > 0, part, 1)) - np.log(np.mean(part, 0, keepdims=True))
        kl = np.mean(np.sum(part * log_ratio, 1))  # 0·log 0 = 0 (the evaluator would give NaN)
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def _stats(stored, pool, spatial):
    if stored is not None:
        return (stored["mu"], stored["sigma"]), (stored["mu_s"], stored["sigma_s"])
    return statistics(pool), statistics(spatial)


def evaluator_metrics(ref_pool, ref_spatial, pool, spatial, fc_weight, ref_stats=None,
                      sample_stats=None, device="cpu", split_size=SPLIT_SIZE, block=BLOCK):
    """The five numbers from activations (float32 arrays) and the classifier's weight [K, D];
    *_stats: a batch's stored {mu, sigma, mu_s, sigma_s}, used instead of its activations'."""
    (mu_r, sigma_r), (mu_rs, sigma_rs) = _stats(ref_stats, ref_pool, ref_spatial)
    (mu, sigma), (mu_s, sigma_s) = _stats(sample_stats, pool, spatial)
    precision, recall = manifold_precision_recall(torch.from_numpy(ref_pool).to(device),
                                                  torch.from_numpy(pool).to(device),
                                                  NEAREST_K, block)
    return {"inception_score": inception_score_from_pool(pool, fc_weight, split_size),
            "fid": frechet_distance(mu, sigma, mu_r, sigma_r),
            "sfid": frechet_distance(mu_s, sigma_s, mu_rs, sigma_rs),
            "precision": precision, "recall": recall}


def evaluate(ref_path, sample_path, inception=None, batch_size=BATCH_SIZE, device="cpu",
             progress=True, net=None):
    """The evaluator's five numbers for the .npz batches at ref_path and sample_path, with the
    Inception weights at `inception` (or a given InceptionV3FID `net`)."""
    ref = open_batch(ref_path, "REF", min_images=NEAREST_K + 1)
    sample = open_batch(sample_path, "SAMPLE", min_images=NEAREST_K + 1)
    if ref.image_size != sample.image_size:
        raise BatchError(f"REF images are {'x'.join(map(str, ref.image_size))} but SAMPLE images "
                         f"are {'x'.join(map(str, sample.image_size))}: compare batches of one "
                         "image size")
    for b, name in ((ref, "REF"), (sample, "SAMPLE")):
        if b.stats is not None and (b.stats["mu"].shape != (2048,)
                                    or b.stats["mu_s"].shape != (SPATIAL_DIM,)):
            raise BatchError(f"{name} batch {b.path}: stored mu {b.stats['mu'].shape} and mu_s "
                             f"{b.stats['mu_s'].shape} are not Inception's (2048,) and "
                             f"({SPATIAL_DIM},)")
    net = net if net is not None else load_inception(inception, device)
    ref_pool, ref_spatial = compute_activations(net, ref, batch_size, device, progress, "REF")
    pool, spatial = compute_activations(net, sample, batch_size, device, progress, "SAMPLE")
    result = evaluator_metrics(ref_pool, ref_spatial, pool, spatial, net.fc.weight.detach(),
                               ref.stats, sample.stats, device)
    result.update(ref_images=len(ref), sample_images=len(sample),
                  ref_stats="stored" if ref.stats is not None else "computed",
                  sample_stats="stored" if sample.stats is not None else "computed")
    return result


# ---- the command -------------------------------------------------------------------------------

EXAMPLES = """\
examples:
  fastguide eval VIRTUAL_imagenet64_labeled.npz samples_50000x64x64x3.npz \\
      --inception classify_image_graph_def.pb
  FASTGUIDE_INCEPTION=pt_inception-2015-12-05-6726825d.pth fastguide eval ref.npz samples.npz

Both batches are guided-diffusion .npz files: arr_0 uint8 [N, H, W, 3]. The reference batch's
stored mu/sigma/mu_s/sigma_s are used when present, as the evaluator does. The Inception weights
are never downloaded: pass guided-diffusion's classify_image_graph_def.pb or pytorch-fid's
pt_inception-2015-12-05-6726825d.pth (or a .safetensors of it).
"""


def add_arguments(p):
    from ..train.options import use_help_formatter
    use_help_formatter(p, "The five numbers of guided-diffusion's evaluations/evaluator.py, "
                          "computed as it computes them:\nInception Score, FID, sFID, precision "
                          "and recall.", EXAMPLES)
    p.add_argument("ref_batch", metavar="REF.npz", help="reference batch (arr_0, optionally "
                   "mu, sigma, mu_s, sigma_s)")
    p.add_argument("sample_batch", metavar="SAMPLE.npz", help="sample batch (arr_0)")
    p.add_argument("--inception", metavar="WEIGHTS", default=None,
                   help=f"InceptionV3 weights: classify_image_graph_def.pb, or a .pth / "
                        f".safetensors state dict with pytorch-fid's names (default: "
                        f"${INCEPTION_ENV})")
    p.add_argument("--out", default=None,
                   help="JSON file for the results (default: SAMPLE with .eval.json in place of "
                        ".npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help="images per Inception forward (the numbers depend on it only by float "
                        "rounding)")
    p.add_argument("--device", default=None,
                   help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _checked(args):
    """Validate every option before any work; return (inception path, out path, device)."""
    from ..cli import CLIError
    inception = args.inception or os.environ.get(INCEPTION_ENV)
    if not inception:
        raise CLIError(f"--inception WEIGHTS is required (or set ${INCEPTION_ENV}): fastguide "
                       "never downloads the Inception weights")
    if not pathlib.Path(inception).is_file():
        raise CLIError(f"--inception {inception} does not exist")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    for name, value in (("REF.npz", args.ref_batch), ("SAMPLE.npz", args.sample_batch)):
        if not pathlib.Path(value).is_file():
            raise CLIError(f"{name} {value} does not exist")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.sample_batch).with_suffix(
        ".eval.json")
    if out.exists() and not args.overwrite:
        raise CLIError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CLIError(f"--out {out}: directory {out.parent} does not exist")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise CLIError(f"--device {args.device}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
    return inception, out, device


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(args):
    from ..cli import CLIError
    inception, out, device = _checked(args)
    try:
        result = evaluate(args.ref_batch, args.sample_batch, inception, args.batch_size, device,
                          progress=not args.no_progress)
    except (BatchError, InceptionWeightsError) as e:
        raise CLIError(str(e)) from None
    print(f"Inception Score: {result['inception_score']}")
    print(f"FID: {result['fid']}")
    print(f"sFID: {result['sfid']}")
    print(f"Precision: {result['precision']}")
    print(f"Recall: {result['recall']}")
    record = dict(result, ref_batch=str(args.ref_batch), sample_batch=str(args.sample_batch),
                  inception=str(inception), inception_sha256=_sha256(inception),
                  command="fastguide " + " ".join(sys.argv[1:]))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return result

