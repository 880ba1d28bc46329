"""Name -> class registries for generators, feature extractors, metrics and protocols.

Built-in plug-ins are listed as lazy ``"module:attr"`` strings so that ``import cxrbench`` stays cheap;
third-party (and the bundled baselines) register through entry points, e.g. in ``pyproject.toml``::

    [project.entry-points."cxrbench.generators"]
    my-gan = "my_package.gan:MyGAN"

The core never grows an if/elif over names: it asks a registry.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .errors import UsageError


class RegistryError(UsageError, ValueError):
    """A name taken twice or an object of the wrong type: a plug-in's mistake, named with the fix."""


def _describe(obj: Any) -> str:
    if isinstance(obj, str):
        return repr(obj)
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Names -> plug-in classes. ``base`` ("module:attr", resolved lazily) is the class every entry must subclass.

    Precedence: built-ins and explicit ``register``/``add`` calls, then entry points. A name is taken once:
    registering a different object under a taken name is refused; an entry point that shadows a built-in is
    ignored with a warning naming its distribution.
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str] | None = None, *, base: str | None = None):
        self.kind = kind
        self.group = group
        self.base = base
        self._entries: dict[str, Any] = dict(builtins or {})  # name -> class or "module:attr"
        self._origin: dict[str, str] = {n: "built-in" for n in self._entries}  # for messages
        self._entry_points_loaded = False

    def register(self, *names: str) -> Callable[[Any], Any]:
        """Decorator: ``@EXTRACTORS.register("random-conv")``."""

        def deco(obj):
            for n in names:
                self.add(n, obj)
            return obj

        return deco

    def add(self, name: str, target: Any) -> None:
        """Register ``target`` (a class, or a lazy ``"module:attr"`` string checked when first resolved)."""
        self._load_entry_points()  # so that a name an installed plug-in already takes is refused here too
        if not isinstance(target, str):
            self._check(name, target)
        if name in self._entries and not self._same(self._entries[name], target):
            raise RegistryError(
                f"{self.kind} name {name!r} is already taken by {_describe(self._entries[name])} "
                f"({self._origin[name]}); cannot register {_describe(target)} under it: choose another name"
            )
        self._entries[name] = target
        self._origin.setdefault(name, "registered")

    @staticmethod
    def _same(old: Any, new: Any) -> bool:
        if old is new or old == new:
            return True
        # a lazy built-in "module:attr" and the class it names are the same entry
        strs = [x for x in (old, new) if isinstance(x, str)]
        objs = [x for x in (old, new) if not isinstance(x, str)]
        return len(strs) == 1 and strs[0] == _describe(objs[0])

    def _base_class(self) -> type | None:
        if isinstance(self.base, str):
            self.base = _resolve(self.base)
        return self.base

    def _check(self, name: str, obj: Any) -> None:
        base = self._base_class()
        if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
            raise RegistryError(
                f"{self.kind} {name!r} ({self._origin.get(name, 'registered')}): {_describe(obj)} is not a "
                f"subclass of {_describe(base)}; derive it from that class"
            )

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"
            if ep.name in self._entries:
                if not self._same(self._entries[ep.name], ep.value):
                    warnings.warn(
                        f"{self.kind} {ep.name!r}: the entry point {ep.value} (distribution {dist}, group "
                        f"{self.group}) is ignored: the name is taken by {_describe(self._entries[ep.name])} "
                        f"({self._origin[ep.name]}); rename the entry point",
                        UserWarning, stacklevel=3,
                    )
                continue
            self._entries[ep.name] = ep.value
            self._origin[ep.name] = f"entry point of {dist}"

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
            obj = _resolve(target)
            self._check(name, obj)
            self._entries[name] = target = obj
        return target


EXTRACTORS = Registry(
    "feature extractor",
    "cxrbench.extractors",
    base="cxrbench.features.base:FeatureExtractor",
    builtins={
        "inception": "cxrbench.features.inception:InceptionV3Extractor",
        "xrv": "cxrbench.features.xrv:XRVDenseNetExtractor",
        "xrv-classifier": "cxrbench.features.xrv:XRVClassifierExtractor",
        "pixels": "cxrbench.features.pixels:PixelStatsExtractor",
        "random-conv": "cxrbench.features.random_conv:RandomConvExtractor",
        "moco": "cxrbench.features.moco:MoCoExtractor",
        "cxr64": "cxrbench.features.cxr64:CXR64Extractor",
        "cxr64-classifier": "cxrbench.features.cxr64:CXR64ClassifierExtractor",
        "cxr128": "cxrbench.features.cxr128:CXR128Extractor",
        "cxr128-classifier": "cxrbench.features.cxr128:CXR128ClassifierExtractor",
        "raddino": "cxrbench.features.vit:RadDinoExtractor",
        "dinov2": "cxrbench.features.vit:DINOv2BaseExtractor",
        "dinov2-large": "cxrbench.features.vit:DINOv2LargeExtractor",
    },
)

METRICS = Registry(
    "metric",
    "cxrbench.metrics",
    base="cxrbench.metrics.base:Metric",
    builtins={
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
        "reid": "cxrbench.metrics.reid:ReID",
    },
)

GENERATORS = Registry("generator", "cxrbench.generators", base="cxrbench.generator:Generator")

# Trainable models that are not generators (the MoCo representation model): same ``Config`` /
# ``train(dataset, config, out_dir)`` / ``save_pretrained`` / ``from_pretrained`` contract, no ``sample``.
REPRESENTATIONS = Registry("representation model", "cxrbench.representations",
                           base="cxrbench.generator:PretrainedMixin")

# the hooks the engine calls are those of ``cxrbench.engine.protocol.Protocol``
PROTOCOLS = Registry(
    "protocol",
    "cxrbench.protocols",
    base="cxrbench.engine.protocol:Protocol",
    builtins={
        "augmentation": "cxrbench.protocols.augmentation.protocol:AugmentationProtocol",
        "cxr64": "cxrbench.protocols.cxr64:CXR64Protocol",
        "cxr128": "cxrbench.protocols.cxr128:CXR128Protocol",
        "chexgenbench": "cxrbench.protocols.chexgenbench:CheXGenBenchProtocol",
    },
)

# classifiers of the augmentation protocol (``--classifier``): ``inputs``, ``image_size``, ``fit(...)``
CLASSIFIERS = Registry(
    "augmentation classifier",
    "cxrbench.classifiers",
    base="cxrbench.protocols.augmentation.classifiers:AugmentClassifier",
    builtins={
        "linear": "cxrbench.protocols.augmentation.classifiers:LinearProbe",
        "cnn": "cxrbench.protocols.augmentation.classifiers:CNNClassifier",
        "densenet": "cxrbench.protocols.augmentation.classifiers:DenseNetClassifier",
    },
)

# named references (``--reference nih-cxr14``): a dataset's folder layout and metadata, read into a table
REFERENCES = Registry(
    "named reference",
    "cxrbench.references",
    base="cxrbench.data.references:NamedReference",
    builtins={
        "nih-cxr14": "cxrbench.data.references:NIHChestXray14",
        "chexpert": "cxrbench.data.references:CheXpert",
    },
)
