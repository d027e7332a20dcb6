"""Sample-quality metrics on features from any extractor: Frechet distance, k-NN precision and
recall, Inception Score, sFID-style spatial features; FID's InceptionV3 (weights from a user-supplied
file, never downloaded)."""
from .inception import InceptionV3FID, load_inception
from .metrics import (feature_statistics, fid_from_features, frechet_distance, inception_score,
                      precision_recall, spatial_features, sqrtm_psd)

__all__ = ["InceptionV3FID", "load_inception", "feature_statistics", "fid_from_features",
           "frechet_distance", "inception_score", "precision_recall", "spatial_features",
           "sqrtm_psd"]
