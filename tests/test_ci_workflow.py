"""The README's GitHub Actions workflow: valid YAML, the same as the example file, and its cxrbench command
lines parse with the real CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cxrbench.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / ".github" / "workflows" / "cxrbench-check.yml.example"


def test_readme_workflow_is_the_example_file():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    assert EXAMPLE.read_text() in blocks


def test_workflow_runs_check_on_pull_requests():
    yaml = pytest.importorskip("yaml")
    wf = yaml.safe_load(EXAMPLE.read_text())
    assert "pull_request" in wf[True]  # YAML 1.1 reads the key `on` as True
    runs = [s["run"] for job in wf["jobs"].values() for s in job["steps"] if "run" in s]
    # the commands in the run steps, plus the `cxrbench submit` that makes the entry (in the header comment)
    header = "\n".join(line[1:] for line in EXAMPLE.read_text().splitlines() if line.startswith("#"))
    texts = runs + re.findall(r"(cxrbench submit .*?)\n\s*\n", header, flags=re.DOTALL)
    commands = [" ".join(t.replace("\\\n", " ").split()) for t in texts if "cxrbench " in t and "pip" not in t]
    assert sorted(c.split()[1] for c in commands) == ["check", "submit"]
    parser = build_parser()
    for c in commands:
        argv = shlex.split(c[c.index("cxrbench ") :])[1:]
        args = parser.parse_args(argv)  # exits (fails the test) on any flag the CLI does not know
        assert args.command in ("check", "submit")
