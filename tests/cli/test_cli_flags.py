"""One meaning per flag name across subcommands, and a one-line refusal of the spellings that changed meaning."""

from __future__ import annotations

import argparse

import pytest

from cxrbench.cli import build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _visible(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def test_report_is_an_html_folder_and_entries_an_entries_folder_everywhere():
    seen = {"--report": [], "--entries": [], "--figure": []}
    for name, p in _subparsers().items():
        flags = _visible(p)
        for flag, commands in seen.items():
            if flag in flags:
                commands.append(name)
        if "--report" in flags:
            assert flags["--report"].metavar == "DIR" and "report.html" in flags["--report"].help, name
        if "--entries" in flags:
            assert "entries folder" in flags["--entries"].help, name
    assert seen["--report"] == ["evaluate"] and seen["--figure"] == ["augment"]
    assert "submit" in seen["--entries"]
    # --out of submit was a folder while evaluate's is the result file: submit has no --out now
    assert "--out" not in _visible(_subparsers()["submit"])


@pytest.mark.parametrize("argv,old,new", [
    (["submit", "--samples", "s/", "--card", "model.toml", "--out", "entries/"], "--out", "--entries DIR"),
    (["submit", "--samples", "s/", "--card", "model.toml", "--out=entry.json"], "--out", "--entries DIR"),
    (["augment", "--real", "r/", "--synthetic", "s/", "--report", "aug.png"], "--report", "--figure FILE.png"),
])
def test_old_spellings_are_refused_in_one_line_naming_the_new_flag(argv, old, new, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cxrbench: error:")]
    assert len(err) == 1 and err[0].startswith(f"cxrbench: error: {old} ") and new in err[0]
