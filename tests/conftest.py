import os
from pathlib import Path

import numpy as np
import pytest
import torch

# OMP_NUM_THREADS wins when set: on a shared, loaded machine two threads can run ~20x slower than one
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_folder(name: str) -> Path:
    p = SHARED_DATA / name
    if not p.is_dir():
        pytest.skip(f"real images not available ({p})")
    return p


def write_pngs(folder: Path, images: torch.Tensor, prefix: str = "img", bits: int = 8) -> Path:
    """Save (N,1,H,W) [0,1] images as PNGs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images[:, 0].numpy()):
        if bits == 8:
            Image.fromarray(np.round(im * 255).astype(np.uint8)).save(folder / f"{prefix}_{i:04d}.png")
        else:
            Image.fromarray(np.round(im * 65535).astype(np.uint16)).save(folder / f"{prefix}_{i:04d}.png")
    return folder


@pytest.fixture
def synthetic_folders(tmp_path):
    """real_a, real_b: two draws of one distribution; shifted: a different distribution."""
    from cxrbench.data.synthetic import synthetic_cxr

    return {
        "real_a": write_pngs(tmp_path / "real_a", synthetic_cxr(40, 32, 0.0, seed=1)),
        "real_b": write_pngs(tmp_path / "real_b", synthetic_cxr(40, 32, 0.0, seed=2)),
        "shifted": write_pngs(tmp_path / "shifted", synthetic_cxr(40, 32, 1.0, seed=3)),
    }


@pytest.fixture
def fast_config(tmp_path):
    from cxrbench.config import EvalConfig

    return EvalConfig(extractors=("random-conv",), metrics=("fid",), weights="random", n_bootstrap=20,
                      cache_dir=str(tmp_path / "cache"), progress=False, num_workers=0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Folder hash indexes (and any default-located feature cache) go to a temporary folder, not ~/.cache."""
    if "CXRBENCH_CACHE" in os.environ:
        yield
        return
    os.environ["CXRBENCH_CACHE"] = str(tmp_path_factory.mktemp("cxrbench-cache"))
    yield
    del os.environ["CXRBENCH_CACHE"]
