"""fastguide.eval metrics against closed forms and hand-computed cases (the network:
test_eval_inception.py; the evaluator's exact recipe: test_eval_evaluator.py)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from fastguide.eval.metrics import (fid_from_features, frechet_distance, inception_score,
                                    precision_recall, spatial_features, sqrtm_psd)


def _random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_diagonal_closed_form():
    # Commuting (diagonal) covariances: tr((Σ1Σ2)^½) = Σ √(a_i b_i).
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("a, b", [([1.0, 4.0, 0.0, 2.0], [4.0, 0.0, 0.25, 1.0]),  # both singular
                                  ([1.0, 4.0, 9.0, 2.0], [4.0, 0.0, 0.25, 1.0]),  # one singular
                                  ([0.0, 4.0, 9.0, 2.0], [4.0, 1.0, 0.25, 1.0])])
def test_frechet_every_path_against_the_diagonal_closed_form(a, b):
    """Cholesky of Σ1, of Σ2, or neither (eigendecomposition), in a rotated basis so that the
    matrices are not diagonal: tr((Σ1Σ2)^½) = Σ √(a_i b_i)."""
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))
    a, b = np.array(a), np.array(b)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert frechet_distance(np.zeros(4), s1, np.zeros(4), s2) == pytest.approx(expected, abs=1e-7)
    assert frechet_distance(np.zeros(4), s2, np.zeros(4), s1) == pytest.approx(expected, abs=1e-7)


def test_frechet_general_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(6, rng), _random_spd(6, rng)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_singular_covariance_is_stable():
    # Rank-deficient covariances (fewer samples than dimensions) must not give nan or < 0.
    rng = np.random.default_rng(1)
    f1, f2 = rng.standard_normal((5, 20)), rng.standard_normal((5, 20)) + 0.5
    d = fid_from_features(f1, f2)
    assert np.isfinite(d) and d > 0


def test_fid_from_samples_approaches_closed_form():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(3, rng), _random_spd(3, rng)
    x1 = rng.multivariate_normal(np.zeros(3), s1, size=200_000)
    x2 = rng.multivariate_normal(np.ones(3), s2, size=200_000)
    exact = frechet_distance(np.zeros(3), s1, np.ones(3), s2)
    assert fid_from_features(x1, x2) == pytest.approx(exact, rel=0.02)


def test_sqrtm_psd_squares_back():
    s = _random_spd(5, np.random.default_rng(3))
    r = sqrtm_psd(s)
    np.testing.assert_allclose(r @ r, s, rtol=1e-10, atol=1e-10)


def test_precision_recall_hand_computed():
    # Reals 0,1,2,3 on a line, k=1: every real ball has radius 1. Fakes 0.5 and 10: only 0.5 is
    # inside → precision 1/2. The two fakes' radii are 9.5 each: every real is covered → recall 1.
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    # Swapping the roles swaps the numbers' meaning: fakes 0..3 inside the balls of 0.5 and 10.
    assert precision_recall(fake, real, k=1) == (1.0, 0.5)


def test_precision_recall_identical_and_disjoint():
    x = np.random.default_rng(4).standard_normal((50, 4))
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 100, k=3) == (0.0, 0.0)


def test_inception_score_limits():
    k = 10
    uniform = np.zeros((100, k))  # p(y|x) = p(y): IS = 1
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    confident = np.full((100, k), -1e4)
    confident[np.arange(100), np.arange(100) % k] = 0  # one-hot, balanced: IS = K
    assert inception_score(confident)[0] == pytest.approx(k, rel=1e-6)
    assert inception_score(confident, splits=4)[1] == pytest.approx(0.0, abs=1e-6)


def test_spatial_features_takes_first_channels():
    fmap = torch.arange(2 * 9 * 3 * 3, dtype=torch.float32).reshape(2, 9, 3, 3)
    f = spatial_features(fmap, channels=7)
    assert f.shape == (2, 63)
    # NHWC order, as the evaluator flattens TF's [N, H, W, C] map: f[n, (h·W + w)·7 + c]
    for h, w, c in [(0, 0, 0), (0, 0, 6), (0, 1, 0), (2, 1, 3)]:
        assert f[1, (h * 3 + w) * 7 + c] == fmap[1, c, h, w]
    with pytest.raises(ValueError):
        spatial_features(fmap, channels=10)


def test_bad_features_name_the_argument():
    rng = np.random.default_rng(5)
    good = rng.standard_normal((20, 4))
    bad = good.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="features has 1 row"):
        fid_from_features(good, bad)
    with pytest.raises(ValueError, match="fake_features has 1 row"):
        precision_recall(good, bad)
    with pytest.raises(ValueError, match="differ in width"):
        precision_recall(good, good[:, :3])
    with pytest.raises(ValueError, match=r"real_features must be \[N >= 4, D\]"):
        precision_recall(good[:3], good)
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.full((5, 3), np.inf))
