"""The cxrbench package imports as a layered graph: data -> features -> metrics -> engine -> protocols ->
publish -> commands -> cli, each importing only its own layer and those below, and no cycle.

Function-local imports count too; they hide a cycle from Python but not from a reader (or a refactor).
"""

import ast
import sys
from pathlib import Path

import cxrbench

ROOT = Path(cxrbench.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    # The deepest existing module on the dotted path; `from .data import io` names the submodule.
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] != "cxrbench":
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != module:
                    graph[module].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None. Iterative DFS with colours."""
    colour = {m: 0 for m in graph}  # 0 unseen, 1 on the stack, 2 done
    for start in sorted(graph):
        if colour[start]:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_find_cycle_detects_and_accepts():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # cxrbench/__init__ imports the harness (engine/evaluate.py) lazily, inside __getattr__.
    assert "cxrbench.engine.evaluate" in graph["cxrbench"]


def test_package_imports_are_acyclic():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


#: subpackage -> layer; top-level modules (errors, config, registry, results, fileio, generator, ...) are the
#: foundation every layer may use (layer 0), and the CLI sits on top
LAYERS = {"data": 1, "features": 2, "metrics": 3, "engine": 4, "protocols": 5, "publish": 6, "commands": 7}
TOP = {"cxrbench", "cxrbench.cli", "cxrbench.__main__"}


def layer(module: str) -> int:
    if module in TOP:
        return 8
    return LAYERS.get(module.split(".")[1], 0)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m))


def test_layer_check_catches_a_planted_upward_import():
    graph = import_graph()
    assert "cxrbench.data.imageset" in graph
    planted = {**graph, "cxrbench.data.imageset": graph["cxrbench.data.imageset"] | {"cxrbench.metrics.bootstrap"}}
    assert upward_imports(planted) == ["cxrbench.data.imageset -> cxrbench.metrics.bootstrap"]
    assert layer("cxrbench.errors") == 0 < layer("cxrbench.data.io") < layer("cxrbench.engine.protocol") \
        < layer("cxrbench.protocols.cxr64") < layer("cxrbench.commands.evaluate") < layer("cxrbench.cli")


def test_no_module_imports_a_layer_above_its_own():
    up = upward_imports(import_graph())
    assert not up, "upward imports (function-level ones included):\n" + "\n".join(up)


def unexplained_local_imports(source: str, module: str) -> list[str]:
    """Imports of cxrbench modules inside a function without a comment saying why (on the line above or the
    same line): the design allows one only for a reason (a heavy optional dependency imported on use, the
    package's lazy top level), and the comment keeps the reason from going stale unnoticed."""
    lines = source.splitlines()
    package = module.split(".")[0]
    out = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            internal = (isinstance(child, ast.ImportFrom) and (child.level or (child.module or "").split(".")[0] == package)
                        or isinstance(child, ast.Import) and any(a.name.split(".")[0] == package for a in child.names))
            if in_function and internal:
                above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                if "#" not in lines[child.lineno - 1] and not above.startswith("#"):
                    out.append(f"{module}:{child.lineno}: {lines[child.lineno - 1].strip()}")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(ast.parse(source), False)
    return out


def test_local_import_check_catches_an_unexplained_one():
    planted = "import os\n\n\ndef f():\n    from .io import load_image\n\n    # why: a reason\n    from . import x\n" \
              "    from cxrbench import y  # why: another\n    import json\n"
    assert unexplained_local_imports(planted, "cxrbench.data.m") == ["cxrbench.data.m:5: from .io import load_image"]


def test_no_function_local_import_of_cxrbench_without_a_reason():
    found = [hit for module, path in _modules().items()
             for hit in unexplained_local_imports(path.read_text(encoding="utf-8"), module)]
    assert not found, "function-local cxrbench imports with no comment saying why (hoist them):\n" + "\n".join(found)


#: third-party packages a function may import on use: each costs a noticeable share of a second (or more) to
#: import, and the paths that skip them (`cxrbench --help`, the light commands, the functional API) should not
#: pay for them. Anything else (the standard library, PIL, numpy) is imported at the top of the module.
HEAVY_ON_USE = frozenset({"torch", "pandas", "matplotlib", "scipy", "sklearn", "transformers", "torchxrayvision",
                          "cleanfid", "safetensors", "prdc", "pydicom", "tqdm", "diffusers"})


def misplaced_local_imports(source: str, module: str) -> list[str]:
    """Function-local imports of anything but a heavy optional dependency, or of one the module already
    imports at its top (then the local import only hides where the name comes from)."""
    tree, lines = ast.parse(source), source.splitlines()
    package = module.split(".")[0]
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and not n.level}
    out = []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)) and not getattr(child, "level", 0):
                root = (child.module if isinstance(child, ast.ImportFrom) else child.names[0].name).split(".")[0]
                if root != package and (root in sys.stdlib_module_names or root not in HEAVY_ON_USE or root in top):
                    out.append(f"{module}:{child.lineno}: {lines[child.lineno - 1].strip()}")
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    walk(tree, False)
    return out


def test_misplaced_local_import_check_catches_each_kind():
    planted = ("import torch\n\n\ndef f():\n    import json\n    from PIL import Image\n    import torch.nn\n"
               "    import pandas as pd\n    from . import x\n")
    assert misplaced_local_imports(planted, "cxrbench.data.m") == [
        "cxrbench.data.m:5: import json", "cxrbench.data.m:6: from PIL import Image", "cxrbench.data.m:7: import torch.nn"]


def test_function_local_imports_are_only_heavy_dependencies_imported_on_use():
    found = [hit for module, path in _modules().items()
             for hit in misplaced_local_imports(path.read_text(encoding="utf-8"), module)]
    assert not found, "function-local imports to hoist to the module's top:\n" + "\n".join(found)
