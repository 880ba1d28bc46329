"""RadDino and DINOv2 extractors: the shipped published configs, preprocessing against transformers' own image
processor on real radiographs, the pooler output, weights resolution and the refusals (the registry contract
runs in test_extractor_contract.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cxrbench.data.io import load_image, sha256_file
from cxrbench.errors import UsageError, WeightsError
from cxrbench.features.vit import (
    CONFIGS,
    DINOv2BaseExtractor,
    DINOv2LargeExtractor,
    RadDinoExtractor,
    preprocess_bit,
    shipped_config,
    shipped_preprocessor,
)
from cxrbench.features.weights import MIRROR_ENV
from cxrbench.registry import EXTRACTORS
from tests.conftest import shared_folder
from tests.features.test_weights import mirror  # noqa: F401 - the fixture: a static HTTP server on 127.0.0.1

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}


def real_images() -> list[torch.Tensor]:
    """(1, 1, H, W) real radiographs: 400x300 JPEGs (non-square), a 256 px PNG, a full-resolution NIH PNG."""
    picks = [("kermany_pediatric_covid_skytells", 2), ("nih_extra_256px", 1), ("nih_fullres_samples", 1)]
    out = []
    for folder, n in picks:
        root = shared_folder(folder)
        rows = (root / "labels.csv").read_text().splitlines()[1 : n + 1]
        out += [torch.from_numpy(load_image(root / r.split(",")[0]))[None, None] for r in rows]
    # cut to 300x271: the centre crop's margins are then odd (59 and 55 px), where a rounded offset (torchvision's
    # own center_crop) would sit one pixel off transformers' truncated one
    return out + [out[0][..., :271]]


@pytest.fixture
def no_weights_anywhere(tmp_path, monkeypatch):
    """No weights reachable: an empty Hugging Face cache, no CXRBENCH_WEIGHTS, no mirror."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.delenv("CXRBENCH_WEIGHTS", raising=False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)


def test_registered():
    assert EXTRACTORS.get("raddino") is RadDinoExtractor
    assert EXTRACTORS.get("dinov2") is DINOv2BaseExtractor
    assert EXTRACTORS.get("dinov2-large") is DINOv2LargeExtractor


def test_shipped_configs_are_the_published_architectures():
    # RadDino is a DINOv2 ViT-B/14 (its published config is Dinov2Model's), 518 px; DINOv2 B/14 and L/14 at 224
    expect = {"rad-dino": (768, 12, 12, 518, 0.5307), "dinov2-base": (768, 12, 12, 224, 0.485),
              "dinov2-large": (1024, 24, 16, 224, 0.485)}
    for folder, (width, depth, heads, crop, mean0) in expect.items():
        c, p = shipped_config(folder), shipped_preprocessor(folder)
        assert c["model_type"] == "dinov2" and c["architectures"] == ["Dinov2Model"] and c["patch_size"] == 14
        assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]) == (width, depth, heads)
        assert p["crop_size"]["height"] == crop and p["image_mean"][0] == mean0 and p["resample"] == 3
        assert transformers.Dinov2Config.from_dict(c).hidden_size == width


#: sha256 of dinov2-base's config.json and preprocessor_config.json at the pinned commit, as the public projects that
#: record the weights' sha256 record them: the shipped copies must be the published files, byte for byte
PUBLISHED_DINOV2_BASE_FILES = {
    "config.json": "f7ff4cfa73d2f70647dbf6950541ad25d73082d54c2e7e9bded160c7656b2a70",
    "preprocessor_config.json": "14e780d86fa1861f8751f868d7f45425b5feb55c38ca26f152ca5097ab30f828",
}


def test_pins_are_a_commit_and_a_file_sha256_and_decide_comparability():
    for cls in (RadDinoExtractor, DINOv2BaseExtractor, DINOv2LargeExtractor):
        assert len(cls.revision) == 40 and int(cls.revision, 16) >= 0, cls.name  # a commit, not a branch
        (pin,) = cls.published_sha256
        assert len(pin) == 64 and pin == pin.lower() and int(pin, 16) >= 0, cls.name
        assert cls.weights_problem(pin) is None  # the published file: comparable
        assert "is not the published file" in cls.weights_problem("0" * 64)
    assert len({c.published_sha256 for c in (RadDinoExtractor, DINOv2BaseExtractor, DINOv2LargeExtractor)}) == 3
    for name, digest in PUBLISHED_DINOV2_BASE_FILES.items():
        assert sha256_file(CONFIGS / "dinov2-base" / name) == digest, name


def test_full_models_build_offline_from_shipped_configs():
    # on the meta device (no memory, no init): ViT-B/14 ~86.6M parameters, ViT-L/14 ~304M, as published
    sizes = {"rad-dino": (86e6, 87e6), "dinov2-base": (86e6, 87e6), "dinov2-large": (303e6, 305e6)}
    for folder, (lo, hi) in sizes.items():
        with torch.device("meta"):
            net = transformers.Dinov2Model(transformers.Dinov2Config.from_dict(shipped_config(folder)))
        assert lo < sum(p.numel() for p in net.parameters()) < hi, folder
    e = DINOv2BaseExtractor.for_tests()
    assert e.input_size == 224 and e.unpublished_weights() == "dinov2: random:0 weights"


@pytest.mark.parametrize("folder", ["rad-dino", "dinov2-base"])
def test_preprocessing_equals_the_image_processor_on_real_images(folder):
    proc = transformers.AutoImageProcessor.from_pretrained(CONFIGS / folder)
    pp = shipped_preprocessor(folder)
    for x in real_images():
        ours = preprocess_bit(x, pp)
        # the processor takes RGB; the image contract is float [0, 1], so no 1/255 rescale
        theirs = proc(images=[x[0].expand(3, -1, -1)], do_rescale=False, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, pp["crop_size"]["height"], pp["crop_size"]["width"])
        assert (ours - theirs).abs().max() <= 1e-4, tuple(x.shape)


def test_output_is_the_pooler_output_the_final_layer_normed_cls_token():
    e = RadDinoExtractor.for_tests()
    x = e.preprocess(torch.rand(2, 1, 60, 80))
    out = e.net(pixel_values=x, output_hidden_states=True)
    cls = e.net.layernorm(out.hidden_states[-1][:, 0])  # the last block's CLS token, then the final LayerNorm
    assert torch.allclose(e.forward(x), cls, atol=1e-5)
    assert not torch.allclose(e.forward(x), out.last_hidden_state[:, 1:].mean(1), atol=1e-2)  # not mean-pooled


@pytest.mark.usefixtures("no_weights_anywhere")
def test_absent_weights_one_line_naming_model_revision_and_the_three_ways():
    with pytest.raises(WeightsError) as err:
        RadDinoExtractor(weights="auto")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("RadDino", "microsoft/rad-dino", f"revision {RadDinoExtractor.revision}", "--weights DIR",
                 f"huggingface-cli download microsoft/rad-dino --revision {RadDinoExtractor.revision}", MIRROR_ENV):
        assert part in msg, part


def save_folder(e, folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    safetensors_torch.save_file({k: v.contiguous() for k, v in e.net.state_dict().items()},
                                str(folder / "model.safetensors"))
    return folder


@pytest.mark.usefixtures("no_weights_anywhere")
def test_saved_folder_round_trip_and_hf_cache(tmp_path, monkeypatch):
    small = dict(shipped_config("rad-dino"), **SMALL)
    ref = RadDinoExtractor(weights="random", seed=3, _config=small)
    x = torch.rand(3, 1, 64, 64)
    folder = save_folder(ref, tmp_path / "saved", small)
    loaded = RadDinoExtractor(weights=str(folder), _config=small)
    assert torch.equal(loaded.extract(x), ref.extract(x))
    # not the published file: usable, and every result made with it names both hashes and is not comparable
    assert len(loaded.weights_id) == 64
    assert loaded.unpublished_weights() == (f"raddino: weights sha256 {loaded.weights_id[:16]}... is not the "
                                            f"published file (sha256 {RadDinoExtractor.published_sha256[0][:16]}...)")
    # one --weights for a run's extractors: a folder holding rad-dino/
    save_folder(ref, tmp_path / "all" / "rad-dino", small)
    assert RadDinoExtractor(weights=str(tmp_path / "all"), _config=small).weights_id == loaded.weights_id
    # the Hugging Face cache layout: snapshots/<commit>; only the pinned commit's snapshot is used, whatever
    # refs/main names (a later commit on the hub is other weights)
    hub = tmp_path / "hub" / "models--microsoft--rad-dino"
    other = RadDinoExtractor(weights="random", seed=4, _config=small)
    save_folder(other, hub / "snapshots" / "abc123", small)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=f"revision {RadDinoExtractor.revision}"):
        RadDinoExtractor(weights="auto", _config=small)
    save_folder(ref, hub / "snapshots" / RadDinoExtractor.revision, small)
    cached = RadDinoExtractor(weights="auto", _config=small)
    assert cached.weights_id == loaded.weights_id and torch.equal(cached.extract(x), ref.extract(x))


@pytest.mark.usefixtures("no_weights_anywhere")
def test_mirror_serves_repo_slash_model_safetensors_once(tmp_path, monkeypatch, mirror):  # noqa: F811
    base, root, requests = mirror
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(MIRROR_ENV, base)
    small = dict(shipped_config("rad-dino"), **SMALL)
    ref = RadDinoExtractor(weights="random", seed=5, _config=small)
    served = save_folder(ref, root / "weights" / "microsoft" / "rad-dino", small) / "model.safetensors"
    x = torch.rand(2, 1, 32, 32)
    # the mirror's file is checked against the pinned sha256: another file is refused and nothing is kept
    with pytest.raises(WeightsError, match="is not the published model.safetensors"):
        RadDinoExtractor(weights="auto", _config=small)
    assert not (tmp_path / "home" / ".cache" / "cxrbench" / "weights" / "rad-dino" / "model.safetensors").exists()
    requests.clear()
    monkeypatch.setattr(RadDinoExtractor, "published_sha256", (sha256_file(served),))  # this file stands in
    for _ in range(2):  # the second run finds the copy in ~/.cache/cxrbench/weights/rad-dino
        got = RadDinoExtractor(weights="auto", _config=small)
        assert torch.equal(got.extract(x), ref.extract(x))
    assert requests == ["/weights/microsoft/rad-dino/model.safetensors"]
    assert (tmp_path / "home" / ".cache" / "cxrbench" / "weights" / "rad-dino" / "model.safetensors").is_file()


def test_wrong_architecture_folder_refused_naming_what_differs(tmp_path):
    # a DINOv2 ViT-L/14 folder offered as RadDino: refused from its config.json before anything is built
    folder = tmp_path / "large"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(shipped_config("dinov2-large")))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"hidden_size 1024 \(expected 768\).*num_hidden_layers 24 \(expected 12\)"):
        RadDinoExtractor(weights=str(folder))
    # no config.json: the tensors' shapes are compared
    small = dict(shipped_config("rad-dino"), **SMALL)
    other = RadDinoExtractor(weights="random", _config=dict(small, hidden_size=32))
    bare = save_folder(other, tmp_path / "bare", small)
    (bare / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"wrong shape: .*\(expected \(1, 1, 64\)\)"):
        RadDinoExtractor(weights=str(bare), _config=small)
    with pytest.raises(WeightsError, match=r"no model.safetensors there or in rad-dino/"):
        RadDinoExtractor(weights=str(tmp_path))


def test_transformers_missing_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UsageError, match=r'pip install "cxrbench\[raddino\]"'):
        RadDinoExtractor.for_tests()


@pytest.mark.weights
@pytest.mark.parametrize("cls", [RadDinoExtractor, DINOv2BaseExtractor, DINOv2LargeExtractor])
def test_published_weights_on_real_images(cls):
    """With the published weights (``$CXRBENCH_WEIGHTS/<model>/``, the Hugging Face cache or the mirror)."""
    try:
        e = cls(weights="auto")
    except WeightsError as err:
        pytest.skip(str(err))
    f = torch.cat([e.extract(x) for x in real_images()])
    assert f.shape == (5, e.num_features) and torch.isfinite(f).all() and (f - f[0]).abs().max() > 0
