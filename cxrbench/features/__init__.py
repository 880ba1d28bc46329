"""Feature extractors, weights resolution, the feature cache, and the torchmetrics adapter."""

from .interop import TorchmetricsFeature, torchmetrics_feature

__all__ = ["TorchmetricsFeature", "torchmetrics_feature"]
