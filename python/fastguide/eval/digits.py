"""Metrics for digit samples, in the feature space of the shipped clean digits classifier
(digits_clean_classifier): its accuracy on the samples' intended labels, and FID / precision /
recall of the samples' features against the held-out digits (450 images never trained on).

The features are the classifier's pooled activations (64-d), the input of its last layer, as
Inception's pool3 features are for ImageNet FID.
"""
import torch

from .. import assets
from ..train.data import digits_split, uint8_to_float
from .metrics import fid_from_features, precision_recall

__all__ = ["DigitsEvaluator"]


class DigitsEvaluator:
    def __init__(self, classifier=None, k=3):
        self.classifier = classifier or assets.load("digits_clean_classifier")
        self.k = k
        x, self.test_labels = digits_split("test")
        self.test_logits, self.test_features = self.features(x)

    @torch.no_grad()
    def features(self, x):
        """(logits [N, 10], pooled features [N, 64]) of images x in [-1, 1]."""
        c = self.classifier
        t = torch.zeros(len(x), dtype=torch.long)
        pooled = {}
        hook = c.out[2].register_forward_hook(lambda m, i, o: pooled.update(f=o.flatten(1)))
        try:
            logits = c(x.float(), t)
        finally:
            hook.remove()
        return logits, pooled["f"]

    def evaluate(self, images_uint8, labels):
        """images: uint8 NHWC (as `fastguide sample` writes them); labels: the intended classes."""
        logits, feats = self.features(uint8_to_float(images_uint8))
        accuracy = (logits.argmax(1) == torch.as_tensor(labels)).double().mean().item()
        precision, recall = precision_recall(self.test_features, feats, k=self.k)
        return {"accuracy": accuracy, "fid": fid_from_features(self.test_features, feats),
                "precision": precision, "recall": recall}
