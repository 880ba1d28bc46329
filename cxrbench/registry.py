"""Name -> class registries for generators, feature extractors, metrics and protocols.

Built-in plug-ins are listed as lazy ``"module:attr"`` strings so that ``import cxrbench`` stays cheap;
third-party (and the bundled baselines) register through entry points, e.g. in ``pyproject.toml``::

    [project.entry-points."cxrbench.generators"]
    my-gan = "my_package.gan:MyGAN"

The core never grows an if/elif over names: it asks a registry.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Callable

from .errors import UsageError


class Registry:
    def __init__(self, kind: str, group: str, builtins: dict[str, str] | None = None):
        self.kind = kind
        self.group = group
        self._entries: dict[str, Any] = dict(builtins or {})  # name -> class or "module:attr"
        self._entry_points_loaded = False

    def register(self, *names: str) -> Callable[[Any], Any]:
        """Decorator: ``@EXTRACTORS.register("random-conv")``."""

        def deco(obj):
            for n in names:
                self._entries[n] = obj
            return obj

        return deco

    def add(self, name: str, target: Any) -> None:
        self._entries[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._entries

    def get(self, name: str) -> Any:
        self._load_entry_points()
        if name not in self._entries:
            raise UsageError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names()) or '(none)'}"
            )
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._entries[name] = target = obj
        return target


EXTRACTORS = Registry(
    "feature extractor",
    "cxrbench.extractors",
    {
        "inception": "cxrbench.features.inception:InceptionV3Extractor",
        "xrv": "cxrbench.features.xrv:XRVDenseNetExtractor",
        "xrv-classifier": "cxrbench.features.xrv:XRVClassifierExtractor",
        "pixels": "cxrbench.features.pixels:PixelStatsExtractor",
        "random-conv": "cxrbench.features.random_conv:RandomConvExtractor",
        "moco": "cxrbench.features.moco:MoCoExtractor",
        "cxr64": "cxrbench.features.cxr64:CXR64Extractor",
        "cxr64-classifier": "cxrbench.features.cxr64:CXR64ClassifierExtractor",
    },
)

METRICS = Registry(
    "metric",
    "cxrbench.metrics",
    {
        "fid": "cxrbench.metrics.fid:FID",
        "fd_inf": "cxrbench.metrics.fd_inf:FDInf",
        "kid": "cxrbench.metrics.kid:KID",
        "prdc": "cxrbench.metrics.prdc:PRDC",
        "memorization": "cxrbench.metrics.memorization:Memorization",
        "ks_features": "cxrbench.metrics.ks:KSFeatures",
        "ks_labels": "cxrbench.metrics.ks:KSLabels",
        "ks_pixels": "cxrbench.metrics.ks:KSPixels",
        "labels": "cxrbench.metrics.labels:LabelDistribution",
        "label_adherence": "cxrbench.metrics.labels:LabelAdherence",
        "ms_ssim": "cxrbench.metrics.diversity:MSSSIM",
        "rrs_moco": "cxrbench.metrics.rrs:RRS",
    },
)

GENERATORS = Registry("generator", "cxrbench.generators")

# Trainable models that are not generators (the MoCo representation model): same ``Config`` /
# ``train(dataset, config, out_dir)`` / ``save_pretrained`` / ``from_pretrained`` contract, no ``sample``.
REPRESENTATIONS = Registry("representation model", "cxrbench.representations")

PROTOCOLS = Registry(
    "protocol",
    "cxrbench.protocols",
    {
        "augmentation": "cxrbench.protocols.augmentation:AugmentationProtocol",
        "cxr64": "cxrbench.protocols.cxr64:CXR64Protocol",
    },
)
