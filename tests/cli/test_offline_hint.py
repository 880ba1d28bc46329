"""Offline, the advice names the network that ships with cxrbench; a statistics file brings its own extractors."""

from __future__ import annotations

import json

import pytest

from cxrbench.cli import main
from cxrbench.errors import WeightsError
from cxrbench.features.weights import resolve_weights_file

from ..conftest import write_pngs


def test_missing_weights_name_the_shipped_network_first_and_random_only_as_smoke_test(tmp_path):
    def offline():
        raise OSError("Name or service not known")

    with pytest.raises(WeightsError) as e:
        resolve_weights_file("FID Inception-v3", ["inception.pth"], weights=None, library_dirs=[tmp_path],
                             download=offline)
    msg = str(e.value)
    assert "\n" not in msg and "--extractors cxr128" in msg
    assert msg.index("--extractors cxr128") < msg.index("--weights random")
    assert "smoke test" in msg[msg.index("--weights random"):]


def test_evaluate_against_statistics_takes_the_files_extractors(tmp_path, capsys):
    """`stats --extractors cxr64` then `evaluate --reference stats.npz` with no other flag: offline, no download."""
    from cxrbench.data.synthetic import synthetic_cxr

    ref = write_pngs(tmp_path / "ref", synthetic_cxr(40, 64, 0.0, seed=1))
    gen = write_pngs(tmp_path / "gen", synthetic_cxr(40, 64, 0.5, seed=2))
    cache = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    stats = tmp_path / "ref.npz"
    assert main(["stats", "--reference", str(ref), "--extractors", "cxr64", "--out", str(stats), *cache]) == 0
    out = tmp_path / "r.json"
    rc = main(["evaluate", "--samples", str(gen), "--reference", str(stats), "--num-workers", "0",
               "--out", str(out), *cache])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["config"]["extractors"] == ["cxr64"] and "fid_cxr64" in result["metrics"]
    assert result["reference"]["kind"] == "statistics"
