"""`fastguide demo`: the guidance trade-off on the shipped digits model, on a CPU, in about a
minute. For each guidance scale it samples the same seeds (label = seed mod 10), writes a PNG
grid, and measures the samples with the clean digits classifier (eval/digits.py):

    accuracy   the clean classifier agrees with the intended label
    FID        Fréchet distance to the 450 held-out digits, in the classifier's feature space
    precision, recall   k-NN manifolds (k = 3) against the held-out digits

Rows: classifier-free guidance ε̃ = (1 + w)·ε(c) − w·ε(∅) at each w, and classifier guidance
of the same conditional model by s·∇ log p(y | x_t) from the noisy classifier at each s.
"""
import json
import pathlib
import time

import torch

from .. import assets
from ..cliutil import CLIError, float_list, positive_int
from ..pipeline import GuidedSampler, generate, labels_for, save_grid, sampler_names
from .digits import DigitsEvaluator
from .metrics import fid_from_features, precision_recall

__all__ = ["add_arguments", "main", "run_demo"]


EXAMPLES = """examples:
  fastguide demo
  fastguide demo --samples 100 --cfg-scales 0,2 --classifier-scales 2 --out /tmp/demo
"""


def add_arguments(p):
    p.description = __doc__
    p.epilog = EXAMPLES
    p.add_argument("--cfg-scales", type=float_list, default=[0, 0.5, 1, 2, 4],
                   help="classifier-free guidance scales w, comma-separated")
    p.add_argument("--classifier-scales", type=float_list, default=[1, 2, 4, 8],
                   help="classifier guidance scales s, comma-separated")
    p.add_argument("--samples", type=positive_int, default=300, help="images per scale")
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps")
    p.add_argument("--sampler", default="ddim", choices=sampler_names(), help="the sampler")
    p.add_argument("--batch-size", type=positive_int, default=300, help="images per batch")
    p.add_argument("--out", default="demo_out", help="where the PNG grids and results.json go")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier demo in --out")
    g = p.add_argument_group("--extended: guidance variants at matched settings")
    g.add_argument("--extended", action="store_true",
                   help="add rows for CFG with a guidance interval and for autoguidance "
                        "(the weaker model digits_unet_weak)")
    g.add_argument("--interval-cfg-scales", type=float_list, default=[2, 4],
                   help="CFG scales to repeat with --guidance-interval")
    g.add_argument("--guidance-interval", type=float_list, default=list(INTERVAL),
                   help="σ_lo,σ_hi of the interval rows (Kynkäänniemi et al.'s EDM2 interval)")
    g.add_argument("--autoguidance-scales", type=float_list, default=[1, 2, 4],
                   help="autoguidance scales w")


INTERVAL = (0.28, 5.42)  # Kynkäänniemi et al. 2024's interval for EDM2-XXL, in σ


def _extended_runs(interval_cfg_scales, interval, autoguidance_scales):
    runs = [("cfg+interval", w, dict(cfg_scale=w, guidance_interval=tuple(interval)))
            for w in interval_cfg_scales]
    weak = assets.load("digits_unet_weak")
    runs += [("autoguidance", w, dict(weak_model=weak, autoguidance_scale=w))
             for w in autoguidance_scales]
    return runs


def run_demo(cfg_scales, classifier_scales, samples=300, steps=20, sampler="ddim",
             batch_size=300, out="demo_out", log=print, extended=None):
    """Sample and measure every row; returns the rows (dicts). extended: None, or
    (interval CFG scales, (σ_lo, σ_hi), autoguidance scales) for the variant rows."""
    """Sample and measure every row; returns the rows (dicts)."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, info = assets.load("digits_unet"), assets.train_info("digits_unet")
    classifier = assets.load("digits_classifier")
    evaluator = DigitsEvaluator()
    seeds = list(range(samples))
    labels = labels_for(seeds, 10)
    rows = [_reference_row(evaluator, samples)]
    log(format_row(rows[0]))
    runs = [("cfg", w, dict(cfg_scale=w)) for w in cfg_scales]
    runs += [("classifier", s, dict(classifier=classifier, classifier_scale=s))
             for s in classifier_scales]
    if extended is not None:
        runs += _extended_runs(*extended)
    for kind, scale, kw in runs:
        start = time.perf_counter()
        guided = GuidedSampler(model, info["diffusion"], sampler, steps, **kw)
        images, _ = generate(guided, seeds, labels, batch_size)
        seconds = time.perf_counter() - start
        row = {"guidance": kind, "scale": scale, **evaluator.evaluate(images, labels),
               "seconds": seconds}
        grid = save_grid(images[:100], out / f"{kind}_{scale:g}.png", columns=10)
        row["grid"] = str(grid)
        rows.append(row)
        log(format_row(row))
    return rows


def _reference_row(evaluator, samples):
    """The floor: one half of the held-out digits against the other, split within each class.

    Why not training digits: the classifier has seen them, so its features on them are atypical
    (measured FID 0.22, worse than any sample set). Why split within classes: these features are
    dominated by the class, so FID mostly measures class proportions; the samples' labels are
    exactly balanced (seed mod 10), and an unbalanced random half measured FID 1.2."""
    feats, labels, logits = evaluator.test_features, evaluator.test_labels, evaluator.test_logits
    g = torch.Generator().manual_seed(0)
    a, b = [], []
    for c in labels.unique():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        a.append(members[: len(members) // 2])
        b.append(members[len(members) // 2:])
    a, b = torch.cat(a), torch.cat(b)
    precision, recall = precision_recall(feats[a], feats[b], k=evaluator.k)
    accuracy = (logits[b].argmax(1) == labels[b]).double().mean().item()
    return {"guidance": "held-out", "scale": float("nan"), "accuracy": accuracy,
            "fid": fid_from_features(feats[a], feats[b]), "precision": precision,
            "recall": recall, "seconds": 0.0}


HEADER = (f"{'guidance':<13} {'scale':>5} {'accuracy':>8} {'FID':>7} {'precision':>9} "
          f"{'recall':>6} {'time':>6}")


def format_row(r):
    scale = "-" if r["scale"] != r["scale"] else f"{r['scale']:g}"
    return (f"{r['guidance']:<13} {scale:>5} {r['accuracy']:>8.3f} {r['fid']:>7.4f} "
            f"{r['precision']:>9.3f} {r['recall']:>6.3f} {r['seconds']:>5.1f}s")


def _write_results(rows, args, seconds):
    """out/results.json: the table with the run's settings and environment (commit, torch)."""
    from ..bench.timing import run_metadata
    payload = {"meta": run_metadata(torch.device("cpu")),
               "settings": {k: getattr(args, k) for k in (
                   "samples", "steps", "sampler", "cfg_scales", "classifier_scales", "extended",
                   "interval_cfg_scales", "guidance_interval", "autoguidance_scales")},
               "total_seconds": round(seconds, 1),
               "rows": [{k: (None if v != v else v) for k, v in r.items()} for r in rows]}
    path = pathlib.Path(args.out) / "results.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def _check(args):
    if len(args.guidance_interval) != 2 or args.guidance_interval[0] > args.guidance_interval[1]:
        raise CLIError(f"--guidance-interval must be SIGMA_LO,SIGMA_HI with SIGMA_LO <= SIGMA_HI, "
                       f"got {args.guidance_interval}")
    for name in ("cfg_scales", "classifier_scales", "interval_cfg_scales", "autoguidance_scales",
                 "guidance_interval"):
        bad = [v for v in getattr(args, name) if v < 0]
        if bad:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 0, got {bad[0]:g}")
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    if (out / "results.json").exists() and not args.overwrite:
        raise CLIError(f"--out {out} holds an earlier demo's results; pass --overwrite to "
                       "replace them, or choose another --out")


def main(args):
    _check(args)
    start = time.perf_counter()
    print(f"fastguide demo: {args.samples} digits per scale, {args.sampler} {args.steps} steps, "
          f"{torch.get_num_threads()} CPU threads; grids in {args.out}/")
    print(HEADER)
    extended = ((args.interval_cfg_scales, args.guidance_interval, args.autoguidance_scales)
                if args.extended else None)
    rows = run_demo(args.cfg_scales, args.classifier_scales, args.samples, args.steps,
                    args.sampler, args.batch_size, args.out, log=print, extended=extended)
    total = time.perf_counter() - start
    _write_results(rows, args, total)
    print(f"total {total:.0f} s. FID and precision/recall use the clean "
          "digits classifier's features against 450 held-out digits; the 'held-out' row is "
          "one half of the held-out digits against the other, split within each class.")
