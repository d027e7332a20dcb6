"""Sample-quality metrics on features from any extractor: Frechet distance, k-NN precision and
recall, Inception Score, sFID-style spatial features."""
from .metrics import (feature_statistics, fid_from_features, frechet_distance, inception_score,
                      precision_recall, spatial_features, sqrtm_psd)

__all__ = ["feature_statistics", "fid_from_features", "frechet_distance", "inception_score",
           "precision_recall", "spatial_features", "sqrtm_psd"]
