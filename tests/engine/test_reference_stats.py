"""`cxrbench stats` + `evaluate --reference stats.npz`: FID from saved statistics equals FID from the images."""

import pytest

from cxrbench.cli import main
from cxrbench.engine.evaluate import evaluate
from cxrbench.errors import UsageError


def test_fid_from_statistics_equals_fid_from_images(synthetic_folders, fast_config, tmp_path, capsys):
    stats = tmp_path / "ref.npz"
    assert main(["stats", "--reference", str(synthetic_folders["real_b"]), "--out", str(stats), "--extractors",
                 "random-conv", "--weights", "random", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    cfg = fast_config.resolved(metrics=("fid", "kid"))  # FID compared; KID must be skipped from statistics
    from_images = evaluate(synthetic_folders["shifted"], synthetic_folders["real_b"], config=cfg)
    from_stats = evaluate(synthetic_folders["shifted"], stats, config=cfg)
    a, b = from_images["metrics"]["fid_random-conv"], from_stats["metrics"]["fid_random-conv"]
    # N <= D here: the images route factors the centred features, the statistics route the covariance;
    # the two agree to float64 round-off of the eigenvalues (~1e-8 relative), far below any reported digit
    assert abs(a["value"] - b["value"]) < 1e-7 * a["value"]
    # the images route resamples both sets, the statistics route only the samples; both flag the same N/D
    assert a["valid"] == b["valid"] and b["reference_from_statistics"]
    assert b["ci"] is None or "reference fixed" in b["ci_method"]
    assert b["real_vs_real"] == pytest.approx(a["real_vs_real"], rel=1e-7)
    assert from_stats["reference"]["kind"] == "statistics"
    assert from_stats["reference"]["sha256"] == from_images["reference"]["sha256"]
    # metrics that need the reference's features are skipped with a reason, not computed wrongly
    assert "kid_random-conv" not in from_stats["metrics"] and "kid" in from_stats["skipped_metrics"]


def test_statistics_made_with_other_weights_are_refused(synthetic_folders, fast_config, tmp_path):
    stats = tmp_path / "ref.npz"
    main(["stats", "--reference", str(synthetic_folders["real_b"]), "--out", str(stats), "--extractors",
          "random-conv", "--weights", "random", "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    with pytest.raises(UsageError, match="different weights"):
        evaluate(synthetic_folders["shifted"], stats, config=fast_config.resolved(weights_seed=1))
