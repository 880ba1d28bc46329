"""Every metric setting is reachable from the config and the CLI, checked before any work."""

import numpy as np
import pytest

from cxrbench.cli import main
from cxrbench.commands.evaluate import parse_metric_settings
from cxrbench.config import MetricSettings
from cxrbench.engine.evaluate import evaluate
from cxrbench.errors import UsageError
from cxrbench.metrics.prdc import prdc_result


def test_a_setting_reaches_the_metric_and_the_result(synthetic_folders, fast_config, tmp_path):
    cfg = fast_config.resolved(metrics=("prdc",), metric_settings={"prdc_k": 3}, cache_dir=str(tmp_path / "c"))
    r = evaluate(synthetic_folders["real_a"], synthetic_folders["real_b"], config=cfg)
    default = evaluate(synthetic_folders["real_a"], synthetic_folders["real_b"], config=cfg.resolved(metric_settings={}))

    assert r["config"]["metric_settings"] == {"prdc_k": 3}
    assert r["metrics"]["density_random-conv"]["value"] != default["metrics"]["density_random-conv"]["value"]
    st = MetricSettings.from_config(cfg)
    assert st.prdc_k == 3 and st.n_bootstrap == cfg.n_bootstrap  # config fields and overrides together
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 8)), rng.normal(size=(50, 8)) + 0.3
    assert prdc_result(a, b, k=3) != prdc_result(a, b, k=5)  # the knob is a real one


def test_cli_parses_and_refuses_settings(synthetic_folders, tmp_path, capsys):
    assert parse_metric_settings(["prdc_k=3", "alpha=0.1", "kid_subset_size=500"]) == {
        "prdc_k": 3, "alpha": 0.1, "kid_subset_size": 500}
    for bad, why in ((["prdc=3"], "does not exist; settings: "), (["prdc_k=three"], "expected a int"),
                     (["prdc_k"], "write KEY=VALUE"), (["prdc_k=2.5"], "expected a int")):
        with pytest.raises(UsageError, match=why):
            parse_metric_settings(bad)
    rc = main(["evaluate", "--samples", str(synthetic_folders["real_a"]), "--reference",
               str(synthetic_folders["real_b"]), "--extractors", "random-conv", "--weights", "random",
               "--metric-setting", "prdc_kk=3", "--quiet", "--no-cache"])
    assert rc == 2 and "prdc_kk" in capsys.readouterr().err


def test_settings_under_a_protocol_make_the_result_not_comparable(tmp_path):
    from cxrbench.config import EvalConfig

    ex = __import__("pathlib").Path(__file__).resolve().parents[2] / "examples" / "cxr64-samples"
    cfg = EvalConfig(protocol="cxr64", metrics=("fid",), use_cache=False, progress=False,
                     metric_settings={"kid_subsets": 20})
    r = evaluate(ex, config=cfg)
    assert r["comparable"] is False and any("metric settings" in w for w in r["not_comparable_because"])


def test_settings_that_are_evalconfig_fields_take_its_defaults_and_its_values():
    import dataclasses

    from cxrbench.config import EvalConfig

    shared = set(MetricSettings.EVAL_FIELDS)
    assert shared == {"seed", "n_bootstrap"}
    # no other setting shadows an EvalConfig field by name (it would be silently ignored, or silently taken)
    others = {f.name for f in dataclasses.fields(MetricSettings)} - shared
    assert not others & {f.name for f in dataclasses.fields(EvalConfig)}
    assert {n: getattr(MetricSettings(), n) for n in shared} == {n: getattr(EvalConfig(), n) for n in shared}
    cfg = EvalConfig(seed=5, n_bootstrap=7, metric_settings={"prdc_k": 3})
    assert isinstance(cfg.metric_settings, MetricSettings)  # nested: the dict of overrides is checked and typed
    st = MetricSettings.from_config(cfg)
    assert (st.seed, st.n_bootstrap, st.prdc_k) == (5, 7, 3)
    assert MetricSettings.from_config(cfg.resolved(seed=9)).seed == 9  # a changed field reaches the metrics
    assert EvalConfig(**dataclasses.asdict(cfg)) == cfg  # a full dict round-trips
    cfg.n_bootstrap = 11  # the config is mutable: the nested copy follows the field
    assert MetricSettings.from_config(cfg).n_bootstrap == cfg.metric_settings.n_bootstrap == 11
    with pytest.raises(UsageError, match="--n-bootstrap"):  # the evaluation's own two are not metric settings
        EvalConfig(metric_settings={"n_bootstrap": 20})
    with pytest.raises(UsageError, match="prdc_kk"):
        EvalConfig(metric_settings={"prdc_kk": 3})
    # a result records the overrides only, and the same config comes back from it
    assert cfg.record()["metric_settings"] == {"prdc_k": 3}
    assert EvalConfig.from_record(cfg.record()) == cfg
