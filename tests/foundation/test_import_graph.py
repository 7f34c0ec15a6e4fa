"""The package's imports point down only: no cycle between modules, no module importing a layer above its own,
training and evaluation (siblings) not importing each other, and torch.distributed touched by one module.

Every import statement counts, at any depth (imports inside functions too): the scan reads syntax trees.
Layers, bottom first (a module may import its own layer and those below):
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "affectverse_ds"

# the first matching prefix decides a module's layer
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("affectverse_ds.bounded", "affectverse_ds.safe_yaml", "affectverse_ds.safe_pickle", "affectverse_ds.chat",
         "affectverse_ds.distributed", "affectverse_ds.files", "affectverse_ds.configs")),
    (1, ("affectverse_ds.config",)),
    (2, ("affectverse_ds.benchmarks",)),
    (3, ("affectverse_ds.data",)),
    (4, ("affectverse_ds.model",)),
    (5, ("affectverse_ds.train", "affectverse_ds.eval")),
    (6, ("affectverse_ds.predict", "affectverse_ds.memory_plan", "affectverse_ds.preflight", "affectverse_ds.tools",
         "affectverse_ds.launch")),
    (7, ("affectverse_ds.demo",)),
    (8, ("affectverse_ds.experiments",)),
]
SIBLINGS = ("affectverse_ds.train", "affectverse_ds.eval")  # same layer, neither may import the other
__doc__ += "\n".join(f"    {n}: {', '.join(p.removeprefix('affectverse_ds.') for p in ps)}" for n, ps in LAYERS)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    if module == "affectverse_ds":
        return 0  # the package's __init__
    for number, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return number
    return None


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """{module: {imported package module: first line}} for every import of a module of ``root``'s package."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = defaultdict(dict)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in files and target != name:
                    graph[name].setdefault(target, node.lineno)
    for name in files:
        graph.setdefault(name, {})
    return dict(graph)


def problems(graph: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for module, imports in sorted(graph.items()):
        mine = layer(module)
        if mine is None:
            found.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        for target, line in sorted(imports.items()):
            theirs = layer(target)
            if theirs is not None and theirs > mine:
                found.append(f"{module}:{line} imports {target} (layer {theirs}, above its own {mine})")
            own_side = next((s for s in SIBLINGS if module.startswith(s + ".")), None)
            if own_side and any(target.startswith(s + ".") or target == s for s in SIBLINGS if s != own_side):
                found.append(f"{module}:{line} imports its sibling {target}")
    found += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def distributed_users(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr == "distributed" and isinstance(node.value, ast.Name)
                    and node.value.id == "torch") or \
                    (isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names)) or \
                    (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed")) or \
                    (isinstance(node, ast.ImportFrom) and node.module == "torch"
                     and any(a.name == "distributed" for a in node.names)):
                hits.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return hits


def test_the_package_imports_point_down_only():
    graph = import_graph(PACKAGE)
    assert len(graph) > 60, f"only {len(graph)} modules: the scan is not reading the package"
    found = problems(graph)
    assert not found, "\n".join(found)


def test_only_one_module_touches_torch_distributed():
    assert not distributed_users(PACKAGE)


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "affectverse_ds"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


@pytest.mark.parametrize("files, expected", [
    # the arrows of the tree before this test (issue 25): each must be found
    ({"data/loader.py": "def f():\n    from affectverse_ds.train.run_length import RunPlan\n",
      "train/run_length.py": ""}, "affectverse_ds.data.loader:2 imports affectverse_ds.train.run_length"),
    ({"eval/evaluate.py": "from affectverse_ds.train import distributed as dist\n", "train/distributed.py": ""},
     "affectverse_ds.eval.evaluate:1 imports its sibling affectverse_ds.train.distributed"),
    ({"data/schema.py": "def f():\n    from affectverse_ds.data.media import frame_count\n",
      "data/media.py": "from affectverse_ds.data.schema import FPS\n"}, "cycle: affectverse_ds.data.media -> "),
    ({"newthing.py": ""}, "affectverse_ds.newthing: in no layer"),
])
def test_the_check_finds_what_the_old_tree_had(tmp_path, files, expected):
    found = problems(import_graph(_write(tmp_path, files)))
    assert any(expected in line for line in found), found


def test_the_distributed_scan_sees_a_direct_call(tmp_path):
    pkg = _write(tmp_path, {"train/loop.py": "import torch\n\ndef f(t):\n    torch.distributed.all_reduce(t)\n",
                            "eval/x.py": "from torch import distributed as d\n",
                            "distributed.py": "import torch.distributed\n"})
    assert distributed_users(pkg) == ["affectverse_ds/eval/x.py:1", "affectverse_ds/train/loop.py:4"]
