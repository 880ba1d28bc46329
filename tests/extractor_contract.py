"""``ExtractorTesterMixin``: the contract every registered feature extractor is tested against.

A test class sets ``name`` (the registry name) and inherits: registry resolution, the spec's keys (the spec
keys the feature cache and goes into every result), eval-only, features of shape ``(N, num_features)``,
float32 and finite, independent of the batch size (8 images in one batch or in batches of 3), and
deterministic. Features are computed as the harness computes them (``run_extractor``, with and without
``prepare_inference``; a derived extractor through its base's features).

The extractor is built with seeded random weights (``cls(weights="random", seed=0, device="cpu")``); an
extractor that cannot be built that way offline declares how in a classmethod ``for_tests()``.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.engine.extraction import run_extractor
from cxrbench.features.base import FeatureExtractor
from cxrbench.registry import EXTRACTORS

SPEC_KEYS = {"name", "version", "weights", "num_features", "input_size", "resize_filter", "kind"}
KINDS = {"embedding", "probabilities", "statistics"}


@functools.cache
def build(name: str, prepared: bool = True) -> FeatureExtractor:
    """One instance per (name, kernels) for the session (several take seconds: BatchNorm calibration).

    ``prepared``: rewritten for inference (BatchNorm folded, channels_last) as the harness does by default;
    otherwise as published (``--plain-kernels``).
    """
    cls = EXTRACTORS.get(name)
    e = cls.for_tests() if hasattr(cls, "for_tests") else cls(weights="random", seed=0, device="cpu")
    return e.prepare_inference() if prepared else e


def features(name: str, images: torch.Tensor, batch_size: int, prepared: bool = True) -> torch.Tensor:
    e = build(name, prepared)
    base = getattr(e, "derived_from", None)
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size]
        out.append(e.from_features(run_extractor(build(base, prepared), x)) if base else run_extractor(e, x))
    return torch.cat(out).cpu()


@functools.cache
def contract_features(name: str, n: int, prepared: bool = True) -> dict[str, torch.Tensor]:
    images = synthetic_cxr(n, 40, seed=3)  # any size: preprocess resizes
    return {"one": features(name, images, n, prepared), "threes": features(name, images, 3, prepared),
            "again": features(name, images, n, prepared)}


class ExtractorTesterMixin:
    name: str = ""
    n_images: int = 8
    tolerance: float = 1e-5  # relative to the features' largest magnitude: batched kernels may round apart

    def feats(self, prepared: bool = True) -> dict[str, torch.Tensor]:
        return contract_features(self.name, self.n_images, prepared)

    def test_registry_resolution(self):
        cls = EXTRACTORS.get(self.name)
        assert issubclass(cls, FeatureExtractor) and cls.name == self.name

    def test_spec(self):
        spec = build(self.name).spec()
        assert SPEC_KEYS <= set(spec), SPEC_KEYS - set(spec)
        assert spec["name"] == self.name and spec["kind"] in KINDS and spec["num_features"] > 0
        assert json.loads(json.dumps(spec)) == spec  # it keys the cache: plain JSON, stable
        assert build(self.name).spec() == spec
        base = getattr(build(self.name), "derived_from", None)
        assert base is None or base in EXTRACTORS

    @pytest.mark.parametrize("prepared", [True, False], ids=["inference-kernels", "plain-kernels"])
    def test_eval_only(self, prepared):
        e = build(self.name, prepared)
        with pytest.raises(RuntimeError, match="eval-only"):
            e.train(True)
        # no module with weights or buffers in training mode (BatchNorm would make features batch-dependent)
        stateful = [m for m in e.modules() if next(m.parameters(False), None) is not None
                    or next(m.buffers(False), None) is not None]
        assert not [type(m).__name__ for m in stateful if m.training]

    def test_shapes_finite(self):
        e = build(self.name)
        f = self.feats()["one"]
        assert f.shape == (self.n_images, e.num_features) and f.dtype == torch.float32
        assert torch.isfinite(f).all()
        assert e.feature_names is None or len(e.feature_names) == e.num_features
        assert len(e.dimension_names()) == e.num_features
        assert (f - f[0]).abs().max() > 0  # different images, different features

    @pytest.mark.parametrize("prepared", [True, False], ids=["inference-kernels", "plain-kernels"])
    def test_batch_size_independence(self, prepared):
        a, b = self.feats(prepared)["one"], self.feats(prepared)["threes"]
        scale = max(1.0, float(a.abs().max()))
        assert (a - b).abs().max() <= self.tolerance * scale

    @pytest.mark.parametrize("prepared", [True, False], ids=["inference-kernels", "plain-kernels"])
    def test_deterministic(self, prepared):
        assert torch.equal(self.feats(prepared)["one"], self.feats(prepared)["again"])
