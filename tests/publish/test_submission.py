"""submit / verify / check end to end, with the real harness: 32 synthetic 32-px images, the seeded
random-conv extractor (``--weights random``), FID only."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from cxrbench.cli import main
from cxrbench.data.synthetic import synthetic_cxr

from ..conftest import write_pngs

N, SIZE = 32, 32
CARD = """\
name = "Tiny GAN"
authors = ["A. Author"]
url = "https://example.org/tiny-gan"
training_data = "synthetic_cxr(seed=2)"
resolution = 32
conditioning = "unconditional"
license = "MIT"
"""


def blur(x: torch.Tensor, passes: int) -> torch.Tensor:
    k = torch.tensor([1.0, 4, 6, 4, 1])
    k = (k[:, None] * k[None, :] / 256.0)[None, None]
    for _ in range(passes):
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k)
    return x


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A reference folder, a samples folder, its entry, and degraded copies of the samples."""
    root = tmp_path_factory.mktemp("submission")
    samples = synthetic_cxr(N, SIZE, 0.0, seed=2)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(0))
    w = {
        "root": root,
        "ref": write_pngs(root / "ref", synthetic_cxr(N, SIZE, 0.0, seed=1)),
        "samples": write_pngs(root / "samples", samples),
        "blurred": write_pngs(root / "blurred", blur(samples, 2)),
        "noised": write_pngs(root / "noised", (samples + 0.1 * noise).clamp(0, 1)),
        "cache": str(root / "cache"),
    }
    (root / "model.toml").write_text(CARD)
    rc = submit(w, "--entries", str(root / "entries"))
    assert rc == 0
    w["entry"] = root / "entries" / "tiny-gan.json"
    return w


def submit(w, *extra):
    return main([
        "submit", "--samples", str(w["samples"]), "--card", str(w["root"] / "model.toml"), "--reference",
        str(w["ref"]), "--weights", "random", "--extractors", "random-conv", "--metrics", "fid", "--n-bootstrap",
        "50", "--num-workers", "0", "--cache-dir", w["cache"], "--quiet", *extra,
    ])


def check(w, samples, *extra):
    return main([
        "check", "--samples", str(samples), "--against", str(w["entry"]), "--num-workers", "0",
        "--cache-dir", w["cache"], "--quiet", *extra,
    ])


def test_entry_records_hashes_card_and_protocol(world):
    e = json.loads(world["entry"].read_text())
    assert e["schema"] == "cxrbench.entry/1" and e["card"]["name"] == "Tiny GAN"
    # per-file hashes agree with an independent hashlib pass over the folder
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in world["samples"].glob("*.png")}
    assert {f["path"]: f["sha256"] for f in e["samples"]["files"]} == files
    # the sample-set hash is the harness's own (sha256 over the sorted per-file hashes)
    from cxrbench.data.imageset import open_folder

    assert e["samples"]["sha256"] == e["result"]["samples"]["sha256"] == open_folder(world["samples"]).sha256
    assert e["weights"] == {"random-conv": "random:0"} and e["comparable"] is False
    assert e["protocol"] == e["result"]["protocol"] and e["protocol"]["name"] == "default"
    assert set(e["result"]["metrics"]) == {"fid_random-conv"}


def test_submit_refuses_to_overwrite_without_force(world, capsys):
    before = world["entry"].read_bytes()
    assert submit(world, "--entries", str(world["entry"].parent)) == 2
    assert "--force" in capsys.readouterr().err
    assert world["entry"].read_bytes() == before
    forced = world["root"] / "forced"
    shutil.copytree(world["entry"].parent, forced)
    assert submit(world, "--entries", str(forced), "--force") == 0
    new = json.loads((forced / "tiny-gan.json").read_text())
    old = json.loads(before)
    assert new["result"]["metrics"] == old["result"]["metrics"]  # seeded: the same numbers again


def test_submit_rejects_a_bad_card_before_evaluating(world, tmp_path, capsys):
    (tmp_path / "model.toml").write_text(CARD.replace("resolution = 32", "resolution = 0"))
    rc = main(["submit", "--samples", str(world["samples"]), "--card", str(tmp_path / "model.toml"),
               "--reference", str(world["ref"]), "--entries", str(tmp_path / "entries"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "model.toml" in err and "'resolution'" in err and "Traceback" not in err
    assert not (tmp_path / "entries").exists()


def test_verify_passes_an_untouched_entry(world, capsys):
    assert main(["verify", str(world["entry"]), "--samples", str(world["samples"]), "--num-workers", "0",
                 "--quiet"]) == 0
    assert "verified" in capsys.readouterr().out


def test_verify_refuses_a_samples_location_outside_the_entrys_tree(world, tmp_path, capsys):
    """An entry is untrusted: ``samples.location`` must not send verify to hash any folder on the machine."""
    shutil.copytree(world["samples"], tmp_path / "private")  # the entry's very files, outside its tree
    (tmp_path / "lb" / "entries").mkdir(parents=True)
    e = json.loads(world["entry"].read_text())
    e["samples"]["location"] = "../../private"
    entry = tmp_path / "lb" / "entries" / "tiny-gan.json"
    entry.write_text(json.dumps(e))
    rc = main(["verify", str(entry), "--num-workers", "0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "tiny-gan.json" in err[0] and "'../../private'" in err[0], err
    assert "outside" in err[0] and "--samples" in err[0]
    # inside the tree it is followed
    shutil.copytree(world["samples"], tmp_path / "lb" / "samples")
    e["samples"]["location"] = "../samples"
    entry.write_text(json.dumps(e))
    assert main(["verify", str(entry), "--num-workers", "0", "--quiet"]) == 0


def test_verify_fails_on_an_edited_value(world, tmp_path, capsys):
    e = json.loads(world["entry"].read_text())
    m = e["result"]["metrics"]["fid_random-conv"]
    m["value"] *= 1 + 1e-4  # far below any CI, far above numerical noise
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(e))
    assert main(["verify", str(edited), "--samples", str(world["samples"]), "--num-workers", "0", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "fid_random-conv.value" in out and "rel diff 1.00e-04" in out
    # and a looser --rtol accepts it: the threshold is the documented one, not hard-wired
    assert main(["verify", str(edited), "--samples", str(world["samples"]), "--num-workers", "0", "--quiet",
                 "--rtol", "1e-3"]) == 0


def test_verify_names_swapped_added_and_removed_files(world, tmp_path, capsys):
    folder = shutil.copytree(world["samples"], tmp_path / "samples")
    shutil.copy(world["blurred"] / "img_0003.png", folder / "img_0003.png")  # swapped content
    (folder / "img_0005.png").unlink()
    shutil.copy(world["noised"] / "img_0001.png", folder / "extra.png")
    assert main(["verify", str(world["entry"]), "--samples", str(folder), "--quiet"]) == 1
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split()[-1] for line in out.splitlines() if line.startswith("file ")}
    assert rows == {"extra.png": "added", "img_0003.png": "changed", "img_0005.png": "removed"}


def test_verify_notices_an_edited_labels_file(world, tmp_path, capsys):
    folder = shutil.copytree(world["samples"], tmp_path / "samples")
    (folder / "labels.csv").write_text("path,Effusion\nimg_0000.png,1\n")
    assert main(["verify", str(world["entry"]), "--samples", str(folder), "--quiet"]) == 1
    assert "file labels.csv" in capsys.readouterr().out


def test_check_passes_on_the_same_samples(world, capsys):
    assert check(world, world["samples"]) == 0
    assert "REGRESSED" not in capsys.readouterr().out


@pytest.mark.parametrize("copy", ["blurred", "noised"])
def test_check_fails_on_a_degraded_copy_and_names_the_metric(world, capsys, copy):
    assert check(world, world[copy]) == 1
    cap = capsys.readouterr()
    row = next(line for line in cap.out.splitlines() if line.startswith("fid_random-conv"))
    assert "REGRESSED" in row and "fid_random-conv" in cap.err
    worse_by, allowed = (float(x) for x in row.split()[4:6])
    assert worse_by > allowed > 0


def test_check_tolerance_and_metric_selection(world, capsys):
    assert check(world, world["blurred"], "--metrics", "fid") == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fid_random-conv"))
    worse_by = float(row.split()[4])
    # an explicit tolerance above the regression lets it through; one below does not
    assert check(world, world["blurred"], "--metrics", "fid_random-conv", "--tolerance", f"{worse_by * 1.01:.6g}") == 0
    assert check(world, world["blurred"], "--tolerance", f"{worse_by * 0.99:.6g}") == 1


def test_check_usage_errors_exit_2(world, tmp_path):
    assert check(world, world["samples"], "--tolerance", "lots") == 2
    assert check(world, world["samples"], "--metrics", "kid") == 2
    assert check(world, tmp_path / "no-such-folder") == 2
    assert main(["check", "--samples", str(world["samples"]), "--against", str(tmp_path / "nope.json")]) == 2
    with pytest.raises(SystemExit) as e:  # argparse: --against missing
        main(["check", "--samples", str(world["samples"])])
    assert e.value.code == 2


def test_entry_config_is_type_checked_and_machine_fields_are_local(world):
    from cxrbench.errors import DataError
    from cxrbench.publish.submission import config_from_entry

    e = json.loads(world["entry"].read_text())
    e["result"]["config"].update(cache_dir="/submitter/cache", device="cuda:3", weights="/submitter/weights")
    cfg = config_from_entry(e, cache_dir="/here")
    assert cfg.cache_dir == "/here" and cfg.device == "auto" and cfg.weights == "auto"
    assert cfg.extractors == ("random-conv",) and cfg.n_bootstrap == 50  # the evaluation itself is the entry's
    for field, bad in [("extractors", "random-conv"), ("n_bootstrap", "50"), ("seed", 1.5), ("metrics", [1])]:
        broken = json.loads(world["entry"].read_text())
        broken["result"]["config"][field] = bad
        with pytest.raises(DataError, match=f"config.{field}"):
            config_from_entry(broken)


def test_check_against_a_result_file_as_well_as_an_entry(world, tmp_path, capsys):
    """A CI baseline from `evaluate --out`, no card or submit: passes on the same samples, fails on worse ones."""
    baseline = tmp_path / "baseline.json"
    assert main(["evaluate", "--samples", str(world["samples"]), "--reference", str(world["ref"]), "--weights",
                 "random", "--extractors", "random-conv", "--metrics", "fid", "--n-bootstrap", "50",
                 "--num-workers", "0", "--cache-dir", world["cache"], "--quiet", "--out", str(baseline)]) == 0
    capsys.readouterr()
    for against in (baseline, world["entry"]):
        base = ["check", "--against", str(against), "--num-workers", "0", "--cache-dir", world["cache"], "--quiet"]
        assert main(base + ["--samples", str(world["samples"])]) == 0, against
        assert "no regression in 1 metric" in capsys.readouterr().err
        assert main(base + ["--samples", str(world["blurred"])]) == 1, against
        assert "fid_random-conv" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something/1"}))
    assert main(["check", "--samples", str(world["samples"]), "--against", str(other)]) == 2
    err = capsys.readouterr().err
    assert "cxrbench.entry/1" in err and "cxrbench.result/1" in err
