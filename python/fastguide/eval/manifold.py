"""Precision and recall (Kynkäänniemi et al. 2019) computed as guided-diffusion's evaluator
computes them (its ManifoldEstimator, DistanceBlock and evaluate_pr), so that the numbers agree,
not only the method:

- distances are SQUARED Euclidean, |u|² − 2·u·v + |v|², clamped at 0;
- each block of distances (rows × columns, 10000 × 10000 by default) is computed from the
  features cast to float16, with every operation rounded to float16 (reductions and the matrix
  product accumulate in float32, as TensorFlow's GPU kernels do); only a block with an inf or
  NaN there (|u|² ≥ 65520) is recomputed in float32, so blocks of one row can differ in
  precision;
- a point's radius is the (k+1)-th smallest distance in its row, the point itself included
  (np.partition index k), so k = 3 means the 3rd nearest other point;
- a point is inside the other set's manifold when its distance to some point of it is <= that
  point's radius (ties count as inside: float16 distances tie often);
- precision = fraction of samples inside the reference manifold, recall = fraction of
  reference points inside the sample manifold.

fastguide.eval.metrics.precision_recall is the exact float64 version of the same method.
"""
import torch

__all__ = ["squared_distances", "manifold_radii", "evaluate_pr", "manifold_precision_recall",
           "BLOCK"]

BLOCK = 10_000  # the evaluator's row_batch_size and col_batch_size


def _squared_distances_in(u, v, dtype):
    """|u|² − 2 u·v + |v|², each operation's result rounded to dtype."""
    u, v = u.to(dtype), v.to(dtype)
    norm_u = u.float().square().to(dtype).float().sum(1).to(dtype)  # reduce_sum(square(U))
    norm_v = v.float().square().to(dtype).float().sum(1).to(dtype)
    dot = (u.float() @ v.float().t()).to(dtype)                     # matmul(U, V, b^T)
    d = (norm_u[:, None] - 2 * dot) + norm_v[None, :]
    return d.clamp_min(0)


def squared_distances(u, v):
    """One distance block as the evaluator's DistanceBlock: float16 when finite, else float32."""
    d = _squared_distances_in(u, v, torch.float16)
    if torch.isfinite(d).all():
        return d.float()
    return _squared_distances_in(u, v, torch.float32)


def manifold_radii(features, k=3, block=BLOCK):
    """[N] squared distance from each row to its k-th nearest other row (the (k+1)-th smallest
    of its row, itself included), from distance blocks of block × block."""
    n = len(features)
    if n < k + 1:
        raise ValueError(f"the k-NN manifold with k={k} needs at least {k + 1} points, got {n}")
    radii = []
    for lo in range(0, n, block):
        rows = features[lo:lo + block]
        d = torch.cat([squared_distances(rows, features[c:c + block])
                       for c in range(0, n, block)], dim=1)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def evaluate_pr(features_1, radii_1, features_2, radii_2, block=BLOCK):
    """(precision, recall) with features_1 the reference: the fraction of features_2 inside
    some reference ball, and of features_1 inside some features_2 ball."""
    inside_1 = torch.zeros(len(features_1), dtype=torch.bool, device=features_1.device)
    inside_2 = torch.zeros(len(features_2), dtype=torch.bool, device=features_2.device)
    for lo1 in range(0, len(features_1), block):
        b1 = slice(lo1, lo1 + block)
        for lo2 in range(0, len(features_2), block):
            b2 = slice(lo2, lo2 + block)
            d = squared_distances(features_1[b1], features_2[b2])
            inside_1[b1] |= (d <= radii_2[b2][None, :]).any(dim=1)
            inside_2[b2] |= (d <= radii_1[b1][:, None]).any(dim=0)
    return inside_2.double().mean().item(), inside_1.double().mean().item()


def manifold_precision_recall(ref_features, sample_features, k=3, block=BLOCK):
    """(precision, recall) of sample_features against ref_features ([N, D] float32 tensors, or
    arrays), as the evaluator's compute_prec_recall."""
    ref = torch.as_tensor(ref_features, dtype=torch.float32)
    sample = torch.as_tensor(sample_features, dtype=torch.float32, device=ref.device)
    if ref.dim() != 2 or sample.dim() != 2 or ref.shape[1] != sample.shape[1]:
        raise ValueError(f"need [N, D] features of equal width, got {list(ref.shape)} and "
                         f"{list(sample.shape)}")
    radii_ref = manifold_radii(ref, k, block)
    radii_sample = manifold_radii(sample, k, block)
    return evaluate_pr(ref, radii_ref, sample, radii_sample, block)
