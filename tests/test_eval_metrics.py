"""Sample-quality metrics against closed forms and an independent matrix square root."""
import numpy as np
import pytest
import scipy.linalg
import torch

from fastguide.eval.metrics import (fid_from_features, frechet_distance, inception_score,
                                    precision_recall, spatial_features, sqrtm_psd)


def random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    s1, s2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_for_general_covariances():
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(6, rng), random_spd(6, rng)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real  # the textbook route, independent of ours
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_sqrtm_psd_squares_back():
    a = random_spd(7, np.random.default_rng(2))
    r = sqrtm_psd(a)
    assert np.allclose(r @ r, a, atol=1e-10) and np.allclose(r, r.T)


def test_fid_from_samples_approaches_the_gaussian_value():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 3))
    y = rng.standard_normal((20000, 3)) * 2 + 1  # N(1, 4 I): FD = 3*1 + 3*(2 - 1)^2 = 6
    assert fid_from_features(x, y) == pytest.approx(6.0, abs=0.15)


def test_precision_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 4, generator=g)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    far = real + 100.0  # disjoint manifolds
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # fakes collapsed onto a quarter of the reals: all inside the real manifold (precision 1),
    # but they cover only part of it (recall well below 1)
    collapsed = real[real[:, 0] > 0.6]
    p, r = precision_recall(real, collapsed, k=3)
    assert p == 1.0 and r < 0.6


def test_inception_score_extremes():
    k = 10
    assert inception_score(torch.zeros(50, k))[0] == pytest.approx(1.0)  # uninformative
    confident = torch.full((50, k), -1e4)
    confident[torch.arange(50), torch.arange(50) % k] = 0.0  # sure and evenly spread
    assert inception_score(confident)[0] == pytest.approx(k, rel=1e-6)


def test_spatial_features_and_bad_input():
    f = spatial_features(torch.randn(2, 9, 4, 5))
    assert f.shape == (2, 7 * 4 * 5)
    with pytest.raises(ValueError, match="need an"):
        spatial_features(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="features must be"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
