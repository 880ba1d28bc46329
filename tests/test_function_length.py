"""No function in the cxrbench package is longer than 80 lines: a longer one does several things, and reads
better as named helpers (the long-function debt that the package paid off; this keeps it paid)."""

import ast
from pathlib import Path

import cxrbench

ROOT = Path(cxrbench.__file__).resolve().parent
MAX_LINES = 80


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` for every function or method over ``limit`` lines, decorators excluded."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_longer_than_80_lines():
    too_long = long_functions()
    assert not too_long, f"split into named helpers (at most {MAX_LINES} lines each): {too_long}"


def test_the_check_sees_a_long_nested_function(tmp_path):
    # the walk reaches methods and nested functions, and counts the body's lines
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"class C:\n    def f(self):\n{body}\n\n\ndef g():\n    return 1\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:2 f ({MAX_LINES + 1} lines)"]
