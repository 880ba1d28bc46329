"""Every flag that mirrors an ``EvalConfig`` field has that field's default (one place for defaults)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from cxrbench.cli import build_parser
from cxrbench.commands import evaluate, stats, submit
from cxrbench.config import NESTED_FLAGS, AugmentSettings, EvalConfig
from cxrbench.errors import UsageError
from cxrbench.registry import EXTRACTORS

DEFAULTS = EvalConfig()
#: one value per flag-able knob, nested settings flat under their prefix (augment_n_real), as results record them
FLAT = DEFAULTS.record()
# commands that build an EvalConfig (or the protocol config it feeds) from their flags
EVAL_COMMANDS = ("evaluate", "stats", "submit", "check", "verify", "augment")
# flags whose dest differs from the field they mirror; negated ones store the opposite of the field
RENAMED = {"n_real": "augment_n_real", "n_test": "augment_n_test", "seeds": "augment_seeds"}
NEGATED = {"no_cache": "use_cache", "quiet": "progress"}
# deliberate departures, each documented in the command's help
DEPARTURES = {("verify", "use_cache")}  # verify recomputes every number unless --use-cache


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", EVAL_COMMANDS)
def test_flags_mirroring_evalconfig_fields_have_their_defaults(command):
    fields = set(FLAT)
    checked = 0
    for action in subparsers()[command]._actions:
        dest = RENAMED.get(action.dest, action.dest)
        if dest in NEGATED:
            assert action.default is (not FLAT[NEGATED[dest]]), (command, action.option_strings)
            checked += 1
        # a None default is resolved later (the entry's value, or EvalConfig's)
        elif dest in fields and action.default is not None and (command, dest) not in DEPARTURES:
            assert action.default == FLAT[dest], (command, action.option_strings, action.default)
            checked += 1
    assert checked >= 1, command


def parse(command: str, *argv: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *argv])


def test_commands_with_no_optional_flags_give_the_default_config():
    cfg = evaluate.config_from_args(parse("evaluate", "--samples", "s", "--reference", "r"))
    assert cfg == DEFAULTS
    cfg = submit.config_from_args(parse("submit", "--samples", "s", "--card", "c", "--reference", "r"))
    assert cfg == DEFAULTS
    # stats keeps the embeddings of evaluate's default extractors (what FID against the file needs)
    cfg = stats.config_from_args(parse("stats", "--reference", "r", "--out", "x.npz"))
    assert dataclasses.replace(cfg, extractors=DEFAULTS.extractors) == DEFAULTS
    wanted = [e for e in DEFAULTS.extractors
              if EXTRACTORS.get(e).kind == "embedding" and getattr(EXTRACTORS.get(e), "derived_from", None) is None]
    assert list(cfg.extractors) == wanted and wanted


def test_augment_command_matches_evaluate_protocol_augmentation():
    from cxrbench.commands import augment

    cfg = augment.config_from_args(parse("augment", "--real", "r", "--synthetic", "s"))
    pairs = {"n_real": "augment_n_real", "n_test": "augment_n_test", "seeds": "augment_seeds", "seed": "seed",
             "n_bootstrap": "n_bootstrap", "batch_size": "batch_size", "device": "device", "weights": "weights",
             "num_workers": "num_workers", "use_cache": "use_cache", "progress": "progress"}
    assert {a: getattr(cfg, a) for a in pairs} == {a: FLAT[b] for a, b in pairs.items()}


@pytest.mark.parametrize("command", sorted(subparsers()))
def test_every_option_with_a_default_shows_it_in_help(command):
    p = subparsers()[command]
    formatter = p._get_formatter()
    missing = []
    for a in p._actions:
        if (not a.option_strings or a.required or any(a.default is x for x in (None, False, True, argparse.SUPPRESS))
                or a.default == []):
            continue  # a None default is resolved later and its help says how; a switch needs no default
        text = formatter._expand_help(a) if a.help else ""
        if "default" not in text.lower():
            missing.append(a.option_strings[0])
    assert not missing, f"{command}: options whose --help hides their default: {missing}"
    assert "(default: 200)" in subparsers()["evaluate"].format_help()  # --n-bootstrap, read from EvalConfig


def test_sample_n_is_documented_as_required_and_missing_it_is_a_usage_error(tmp_path, capsys):
    from cxrbench.cli import main

    assert "required" in subparsers()["sample"].format_help().split("--n N", 2)[-1].split("--out")[0]
    # refused before the model folder is even read
    assert main(["sample", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "s")]) == 2
    assert "--n is required" in capsys.readouterr().err


def _evaluate_actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in subparsers()["evaluate"]._actions}


def _shown(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _flag_fields():
    """(dest, field, default) of every knob that is a flag: EvalConfig's own and the nested settings'."""
    for f in dataclasses.fields(EvalConfig):
        if f.name in NESTED_FLAGS:
            for g in dataclasses.fields(AugmentSettings):
                yield NESTED_FLAGS[f.name] + g.name, g, getattr(DEFAULTS.augment, g.name)
        else:
            yield f.name, f, getattr(DEFAULTS, f.name)


def test_every_evalconfig_flag_of_evaluate_shows_the_dataclass_default_in_its_help():
    p, actions = subparsers()["evaluate"], _evaluate_actions()
    formatter = p._get_formatter()
    flagged = {dest for dest, f, _ in _flag_fields() if "help" in f.metadata}
    # a new field decides: a flag (help text in its metadata), or listed here as not one
    assert {dest for dest, _, _ in _flag_fields()} - flagged == {"weights_seed", "metric_settings"}
    assert {"augment_task", "augment_n_real", "augment_n_test", "augment_seeds"} <= flagged
    for name, f, default in _flag_fields():
        if name not in flagged:
            continue
        a = actions[name]
        text = formatter._expand_help(a)
        assert text.startswith(f.metadata["help"]), name  # the help text is the field's
        if isinstance(default, bool):  # a switch: giving it flips the default
            flipped = build_parser().parse_args(["evaluate", "--samples", "s", a.option_strings[0]])
            assert a.default is default and getattr(flipped, name) is (not default), name
        elif f.metadata.get("cli_default", default) is None and default is not None \
                and "default" in f.metadata["help"]:
            assert name == "protocol"  # resolved from --reference, as its help says
        elif default is not None:
            assert f"(default: {_shown(default)})" in text, (name, text)


def test_nested_settings_reach_the_config_from_their_flags():
    args = parse("evaluate", "--samples", "s", "--reference", "r", "--augment-task", "Edema vs No Finding",
                 "--augment-n-real", "40", "--metric-setting", "prdc_k=3")
    cfg = evaluate.config_from_args(args)
    assert cfg.augment == AugmentSettings(task="Edema vs No Finding", n_real=40)
    assert cfg.metric_settings.prdc_k == 3 and cfg.record()["metric_settings"] == {"prdc_k": 3}
    assert EvalConfig.from_record(cfg.record()) == cfg  # what a result stores gives the same config back
    with pytest.raises(UsageError, match=r"augment: unknown setting\(s\) tsk; settings: task, n_real, n_test, seeds"):
        EvalConfig(augment={"tsk": "Edema vs No Finding"})


@pytest.mark.parametrize("name,value,flag", [("batch_size", 7, "--batch-size"), ("n_bootstrap", 13, "--n-bootstrap"),
                                             ("precision", "bf16", "--precision"), ("xrv_resize", "torch-antialias",
                                                                                    "--xrv-resize")])
def test_changing_a_default_in_evalconfig_changes_the_cli(monkeypatch, name, value, flag):
    field = next(f for f in dataclasses.fields(EvalConfig) if f.name == name)
    monkeypatch.setattr(field, "default", value)
    args = parse("evaluate", "--samples", "s", "--reference", "r")
    assert getattr(args, name) == value and getattr(evaluate.config_from_args(args), name) == value
    action = _evaluate_actions()[name]
    assert action.option_strings == [flag]
    assert f"(default: {value})" in subparsers()["evaluate"]._get_formatter()._expand_help(action)


@pytest.mark.parametrize("argv,want", [
    (["--protocol", "cxr128"], "cxr128"), (["--protocol", "chexgenbench", "--reference", "r"], "chexgenbench"),
    ([], "cxr128"), (["--reference", "r"], "default"),
])
def test_an_explicit_protocol_flag_reaches_the_config_once(argv, want):
    # --protocol is a field flag and is also resolved from --reference: given explicitly it must not be passed
    # twice (EvalConfig() got multiple values for 'protocol')
    args = build_parser().parse_args(["evaluate", "--samples", "s", *argv])
    assert evaluate.config_from_args(args).protocol == want


@pytest.mark.parametrize("command", ["stats", "validate", "augment", "submit"])
def test_other_commands_take_the_help_text_from_the_field_metadata(command):
    # one help text per knob: a command that mirrors a field says what the field's metadata says
    actions = {a.dest: a for a in subparsers()[command]._actions}
    # submit's --weights says more: a random-weights entry is never ranked
    shared = [n for n in ("weights", "device", "batch_size", "n_bootstrap")
              if n in actions and (command, n) != ("submit", "weights")]
    assert shared
    for name in shared:
        help_text = EvalConfig.__dataclass_fields__[name].metadata["help"]
        assert actions[name].help.startswith(help_text), (command, name, actions[name].help)
