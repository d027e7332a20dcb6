"""fastguide.eval.evaluator against guided-diffusion's evaluations/evaluator.py, re-derived here
from its formulas (numpy + scipy, written independently of the library): FID and sFID with
scipy's sqrtm, IS from bias-free logits in splits of 5000, and precision/recall with float16
squared distances in blocks, k = 3, ties counted inside and the float32 fallback per block."""
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from fastguide.eval.evaluator import evaluator_metrics, inception_score_from_pool, statistics
from fastguide.eval.manifold import manifold_precision_recall
from fastguide.eval.ref_batch import BatchError, open_batch


# ---- the evaluator's formulas, written out for the test -------------------------------------

def ref_fid(mu1, sigma1, mu2, sigma2):
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    covmean = covmean.real
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def ref_inception_score(pool, w, split_size=5000):
    logits = pool.astype(np.float32) @ w.T.astype(np.float32)
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = (e / e.sum(1, keepdims=True)).astype(np.float32)
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def ref_distances_in(a, b, dtype):
    """|a|² − 2ab + |b|² clamped at 0, every operation in dtype (sums accumulated in float32)."""
    with np.errstate(over="ignore", invalid="ignore"):
        a, b = a.astype(dtype), b.astype(dtype)
        na = np.sum(np.square(a), axis=1, dtype=np.float32).astype(dtype)
        nb = np.sum(np.square(b), axis=1, dtype=np.float32).astype(dtype)
        mm = (a.astype(np.float32) @ b.astype(np.float32).T).astype(dtype)
        return np.maximum(na[:, None] - dtype(2) * mm + nb[None, :], dtype(0))


def ref_block_distances(u, v):
    """DistanceBlock: the float16 distances when all are finite, else float32 ones."""
    d = ref_distances_in(u, v, np.float16)
    if np.all(np.isfinite(d)):
        return d.astype(np.float32)
    return ref_distances_in(u, v, np.float32)


def ref_radii(x, k, block):
    radii = np.zeros(len(x), np.float32)
    for b1 in range(0, len(x), block):
        rows = x[b1:b1 + block]
        d = np.concatenate([ref_block_distances(rows, x[b2:b2 + block])
                            for b2 in range(0, len(x), block)], axis=1)
        radii[b1:b1 + block] = np.partition(d, k, axis=1)[:, k]
    return radii


def ref_precision_recall(ref, sample, k=3, block=10000):
    r1, r2 = ref_radii(ref, k, block), ref_radii(sample, k, block)
    in1, in2 = np.zeros(len(ref), bool), np.zeros(len(sample), bool)
    for b1 in range(0, len(ref), block):
        for b2 in range(0, len(sample), block):
            d = ref_block_distances(ref[b1:b1 + block], sample[b2:b2 + block])
            in1[b1:b1 + block] |= np.any(d <= r2[None, b2:b2 + block], axis=1)
            in2[b2:b2 + block] |= np.any(d <= r1[b1:b1 + block, None], axis=0)
    return float(np.mean(in2)), float(np.mean(in1))


# ---- parity -------------------------------------------------------------------------------------

def test_fid_and_sfid_match_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((400, 48)) @ rng.standard_normal((48, 48))).astype(np.float32)
    b = (rng.standard_normal((300, 48)) * 1.3 + 0.2).astype(np.float32)
    mu_a, sigma_a = statistics(a)
    assert mu_a.dtype == np.float32 and sigma_a.dtype == np.float64  # as the evaluator's
    torch.testing.assert_close(sigma_a, np.cov(a.astype(np.float64), rowvar=False))
    w = rng.standard_normal((10, 48)).astype(np.float32)
    out = evaluator_metrics(a, b[:, :20], b, a[:, :20], w)
    expected = ref_fid(*statistics(b), *statistics(a))
    assert out["fid"] == pytest.approx(expected, rel=1e-9)
    assert out["sfid"] == pytest.approx(ref_fid(*statistics(a[:, :20]), *statistics(b[:, :20])),
                                        rel=1e-9)
    # Stored statistics replace the activations' (the published reference batches).
    stored = {"mu": mu_a + 1, "sigma": sigma_a * 2, "mu_s": np.zeros(20), "sigma_s": np.eye(20)}
    out = evaluator_metrics(a, b[:, :20], b, a[:, :20], w, ref_stats=stored)
    assert out["fid"] == pytest.approx(ref_fid(*statistics(b), mu_a + 1, sigma_a * 2), rel=1e-9)
    assert out["sfid"] == pytest.approx(ref_fid(*statistics(a[:, :20]), np.zeros(20), np.eye(20)),
                                        rel=1e-9)


def test_inception_score_from_bias_free_logits_in_splits_of_5000():
    rng = np.random.default_rng(1)
    pool = np.abs(rng.standard_normal((12_000, 16))).astype(np.float32)  # 5000 + 5000 + 2000
    w = (rng.standard_normal((10, 16)) * 0.8).astype(np.float32)
    got = inception_score_from_pool(pool, w)
    assert got == pytest.approx(ref_inception_score(pool, w), rel=1e-5)
    # The splits matter: one split of all 12000 gives another number.
    assert abs(ref_inception_score(pool, w, split_size=12_000) - got) > 1e-4
    assert inception_score_from_pool(pool, w, split_size=7) == pytest.approx(
        ref_inception_score(pool, w, split_size=7), rel=1e-5)


def _pr_features(seed):
    """Features with many exact ties (small integers) and a few rows too large for float16,
    so that some distance blocks fall back to float32 and others do not."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, (37, 6)).astype(np.float32)
    sample = rng.integers(0, 4, (29, 6)).astype(np.float32)
    sample[:12] += rng.random((12, 6)).astype(np.float32) / 8
    ref[[3, 30]] *= 150      # |u|² ~ 1e5: inf in float16
    sample[[25]] *= 150
    return ref, sample


@pytest.mark.parametrize("block", [10, 16, 10_000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_match_the_manifold_estimator_bit_for_bit(seed, block):
    ref, sample = _pr_features(seed)
    # The cases are really there: exact ties between a distance and a radius, and distance
    # blocks that fall back to float32 next to blocks that stay float16.
    d = ref_block_distances(ref, sample)
    assert (d == ref_radii(sample, 3, block)[None, :]).any()
    assert (d == ref_radii(ref, 3, block)[:, None]).any()
    finite = [np.isfinite(ref_distances_in(ref[i:i + block], ref[j:j + block], np.float16)).all()
              for i in range(0, 37, block) for j in range(0, 37, block)]
    if block < 37:
        assert any(finite) and not all(finite)
    got = manifold_precision_recall(torch.from_numpy(ref), torch.from_numpy(sample), 3, block)
    assert got == ref_precision_recall(ref, sample, 3, block)


def test_precision_recall_float16_semantics_are_what_decides():
    """Far from the origin, |u|² − 2uv + |v|² in float16 cancels catastrophically (|u|² ~ 5e4,
    float16 spacing 32 there): the evaluator's numbers then differ from the exact method's, and
    it is the evaluator's that are reproduced."""
    from fastguide.eval.metrics import precision_recall
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((60, 32)).astype(np.float32) * 6 + 40
    sample = ref[:30] + rng.standard_normal((30, 32)).astype(np.float32) * 0.05
    got = manifold_precision_recall(torch.from_numpy(ref), torch.from_numpy(sample))
    assert got == ref_precision_recall(ref, sample)
    assert got != precision_recall(ref, sample, k=3)


# ---- batches ------------------------------------------------------------------------------------

def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_batch_loader_streams_in_file_order_and_reads_stats(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
    b = open_batch(_save(tmp_path / "a.npz", arr_0=imgs))
    assert b.shape == (10, 5, 6, 3) and b.stats is None
    np.testing.assert_array_equal(np.concatenate(list(b.batches(4))), imgs)
    assert [len(x) for x in b.batches(4)] == [4, 4, 2]
    np.savez_compressed(tmp_path / "c.npz", arr_0=imgs, mu=np.ones(4), sigma=np.eye(4),
                        mu_s=np.ones(2), sigma_s=np.eye(2))
    c = open_batch(tmp_path / "c.npz")
    np.testing.assert_array_equal(np.concatenate(list(c.batches(3))), imgs)
    assert set(c.stats) == {"mu", "sigma", "mu_s", "sigma_s"}
    with pytest.raises(BatchError, match=r"\['mu', 'sigma'\] but not \['mu_s', 'sigma_s'\]"):
        open_batch(_save(tmp_path / "d.npz", arr_0=imgs, mu=np.zeros(3), sigma=np.eye(3)))


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, r"has no arr_0 .*\['images'\]"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "must be uint8 images"),
    ({"arr_0": np.zeros((4, 3, 8, 8), np.uint8)}, r"uint8 images \[N, H, W, 3\].*\[4, 3, 8, 8\]"),
    ({"arr_0": np.zeros((8, 8, 3), np.uint8)}, "must be uint8 images"),
    ({"arr_0": np.zeros((3, 8, 8, 3), np.uint8)}, "has 3 images; at least 4"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8), "mu": np.zeros(5), "sigma": np.zeros((5, 4)),
      "mu_s": np.zeros(2), "sigma_s": np.eye(2)}, "not a mean"),
])
def test_bad_batches_name_the_file_and_the_problem(tmp_path, arrays, message):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(BatchError, match=message):
        open_batch(path, "REF", min_images=4)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(BatchError, match="is not an .npz file"):
        open_batch(tmp_path / "x.npz")
    with pytest.raises(FileNotFoundError, match="SAMPLE batch .* does not exist"):
        open_batch(tmp_path / "none.npz", "SAMPLE")


# ---- the command, end to end with random Inception weights --------------------------------------

def test_eval_command_end_to_end(tmp_path, capsys, monkeypatch):
    """REF with stored statistics, SAMPLE without, random Inception weights: the command's
    numbers are the evaluator's recipe applied to the activations it computed."""
    from fastguide.cli import main
    from fastguide.eval import evaluator
    from test_eval_inception import random_inception_state
    state = random_inception_state(seed=0)
    torch.save(state, tmp_path / "inception.pth")
    rng = np.random.default_rng(0)
    stored = {"mu": rng.random(2048), "sigma": np.eye(2048) * 0.01, "mu_s": rng.random(2023),
              "sigma_s": np.eye(2023) * 0.02}
    _save(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (4, 12, 12, 3), dtype=np.uint8),
          **stored)
    _save(tmp_path / "sample.npz", arr_0=rng.integers(0, 256, (4, 12, 12, 3), dtype=np.uint8))
    seen = []
    real = evaluator.compute_activations
    monkeypatch.setattr(evaluator, "compute_activations",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    argv = ["eval", str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz"), "--inception",
            str(tmp_path / "inception.pth"), "--batch-size", "3", "--no-progress",
            "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:5]] == [
        "Inception Score", "FID", "sFID", "Precision", "Recall"]
    record = json.loads((tmp_path / "sample.eval.json").read_text())
    (ref_pool, _), (pool, spatial) = seen
    assert pool.shape == (4, 2048) and spatial.shape == (4, 2023)
    assert record["ref_stats"] == "stored" and record["sample_stats"] == "computed"
    # Against the stored c·I covariances the distance has a closed form that needs only the
    # 4x4 Gram matrix: tr((Σ·cI)^½) = √c·Σ√λ(Σ), and Σ's nonzero λ are the Gram matrix's.
    for key, acts, mu, c in (("fid", pool, stored["mu"], 0.01),
                             ("sfid", spatial, stored["mu_s"], 0.02)):
        x = acts.astype(np.float64) - acts.mean(0)
        lam = np.clip(np.linalg.eigvalsh(x @ x.T / (len(x) - 1)), 0, None)
        diff = acts.mean(0) - mu
        expected = diff @ diff + lam.sum() + c * len(mu) - 2 * np.sqrt(c) * np.sqrt(lam).sum()
        assert record[key] == pytest.approx(expected, rel=1e-6), key
    w = state["fc.weight"].numpy()
    assert record["inception_score"] == pytest.approx(ref_inception_score(pool, w), rel=1e-5)
    assert (record["precision"], record["recall"]) == ref_precision_recall(ref_pool, pool)
    # Rerunning refuses to replace the results file, before any work.
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
