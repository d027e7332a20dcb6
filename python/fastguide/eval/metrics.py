"""Sample-quality metrics on features from any extractor (rows = images):

    frechet_distance   FID = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)  (Heusel et al. 2017)
    precision_recall   k-NN manifold precision and recall (Kynkäänniemi et al. 2019)
    inception_score    exp E_x KL(p(y|x) ‖ p(y))                   (Salimans et al. 2016)
    spatial_features   sFID's features: the first channels of an intermediate feature map,
                       flattened (NHWC order), so the Fréchet distance also sees spatial
                       structure (Nash et al. 2021, as in ADM's evaluator)

fastguide.eval.evaluator computes the five numbers of guided-diffusion's evaluator exactly as it
does (its float16 distances for precision/recall, its IS splits); these functions are the
general, exact versions for any features (the digits demo uses them).

tr((Σ₁Σ₂)^½) is Σ√λ over the eigenvalues of Σ₁Σ₂, which are those of the symmetric positive
semi-definite Lᵀ Σ₂ L (Σ₁ = L Lᵀ, Cholesky) or, for a singular Σ₁, of A Σ₂ A (A = Σ₁^½): symmetric
eigenvalue problems in float64, without the complex values and ε-retries that a general sqrtm of
the non-symmetric Σ₁Σ₂ needs.
"""
import numpy as np
import torch

__all__ = ["feature_statistics", "frechet_distance", "fid_from_features", "sqrtm_psd",
           "precision_recall", "inception_score", "spatial_features"]


def _as_float64(x):
    return np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)


def _features(x, name, min_rows=2):
    """x as float64 [N, D], checked: a NaN or inf (a diverged sampler) would otherwise surface
    as a LinAlgError or a silently wrong score."""
    f = _as_float64(x)
    if f.ndim != 2 or len(f) < min_rows:
        raise ValueError(f"{name} must be [N >= {min_rows}, D], got shape {f.shape}")
    if not np.isfinite(f).all():
        bad = int((~np.isfinite(f)).any(axis=1).sum())
        raise ValueError(f"{name} has {bad} row(s) with NaN or inf")
    return f


def feature_statistics(features):
    """(mean, covariance) of [N, D] features, with the unbiased (N − 1) covariance."""
    f = _features(features, "features")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a):
    """The symmetric positive semi-definite square root of a symmetric matrix (negative
    eigenvalues, from round-off, are clipped to zero)."""
    a = _as_float64(a)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (a float)."""
    mu1, mu2, sigma1, sigma2 = map(_as_float64, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: means {mu1.shape} vs {mu2.shape}, "
                         f"covariances {sigma1.shape} vs {sigma2.shape}")
    tr_covmean = _trace_sqrt_product(sigma1, sigma2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _trace_sqrt_product(sigma1, sigma2):
    """tr((Σ1Σ2)^½) = Σ √λ over the eigenvalues λ of Σ1Σ2, real and >= 0 for PSD Σ1, Σ2. With a
    Cholesky factor L of either (Σ = L Lᵀ, when it is positive definite) they are those of the
    symmetric Lᵀ Σ' L: no eigenvectors needed. Otherwise those of A Σ2 A, A = Σ1^½."""
    for a, b in ((sigma1, sigma2), (sigma2, sigma1)):
        try:
            factor = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:  # singular, e.g. fewer samples than dimensions
            continue
        middle = factor.T @ b @ factor
        break
    else:
        root1 = sqrtm_psd(sigma1)
        middle = root1 @ sigma2 @ root1
    return np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()


def fid_from_features(features1, features2):
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _kth_neighbour_radii(features, k, chunk):
    """Distance from each row to its k-th nearest other row."""
    radii = []
    for lo in range(0, len(features), chunk):
        d = torch.cdist(features[lo:lo + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(radii)


def _covered(queries, anchors, radii, chunk):
    """For each query: is it inside some anchor's ball?"""
    out = []
    for lo in range(0, len(queries), chunk):
        d = torch.cdist(queries[lo:lo + chunk], anchors)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real_features, fake_features, k=3, chunk=1024):
    """(precision, recall): the fraction of fakes inside the real manifold, and of reals inside
    the fake manifold, each manifold the union of balls reaching every point's k-th neighbour."""
    real = torch.as_tensor(_features(real_features, "real_features", k + 1))
    fake = torch.as_tensor(_features(fake_features, "fake_features", k + 1))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real_features and fake_features differ in width: {real.shape[1]} "
                         f"vs {fake.shape[1]}")
    real_radii = _kth_neighbour_radii(real, k, chunk)
    fake_radii = _kth_neighbour_radii(fake, k, chunk)
    precision = _covered(fake, real, real_radii, chunk).double().mean().item()
    recall = _covered(real, fake, fake_radii, chunk).double().mean().item()
    return precision, recall


def inception_score(logits, splits=1):
    """(mean, std over splits) of exp(E KL(p(y|x) ‖ p(y))), from classifier logits [N, K]."""
    log_p = torch.log_softmax(torch.as_tensor(_features(logits, "logits", splits)), dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def spatial_features(feature_map, channels=7):
    """[N, C, H, W] -> [N, H·W·channels]: the first `channels` channels, flattened in NHWC order
    (h, w, c), as ADM's evaluator flattens TF's mixed_6/conv[..., :7]. The order leaves the
    Fréchet distance unchanged but must match stored statistics (a reference batch's mu_s)."""
    if feature_map.dim() != 4 or feature_map.shape[1] < channels:
        raise ValueError(f"need an [N, C >= {channels}, H, W] map, got {list(feature_map.shape)}")
    return feature_map[:, :channels].permute(0, 2, 3, 1).flatten(1)
