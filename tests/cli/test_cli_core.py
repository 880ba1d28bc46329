"""The core CLI stands on cxrbench alone: plug-ins (the bundled baselines too) arrive through the registries."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_building_the_parser_leaves_baselines_unimported():
    # a fresh interpreter: this test session has imported baselines already
    code = textwrap.dedent("""
        import sys
        import cxrbench.cli as cli
        cli.build_parser()
        print(sorted(m for m in sys.modules if m.split(".")[0] == "baselines"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_no_cxrbench_module_imports_the_baselines_package():
    # the commands' run() functions import lazily, so the test above cannot see them: read the sources
    import ast
    from pathlib import Path

    import cxrbench

    root = Path(cxrbench.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "baselines"]
    assert not offenders, offenders
