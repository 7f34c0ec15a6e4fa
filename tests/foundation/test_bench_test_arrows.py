"""bench/ and tests/ point at the package, never at each other: no benchmark imports or names tests/ (a
checkout's product folders must run without it), no test imports bench/ (through ``sys.path`` or by path), and
no test loads another test module or a conftest (shared helpers live in ``tests/support/`` or the package).

Files are read as syntax trees, imports at any depth counted; code handed to a child ``python -c`` (a string
constant that parses once its ``str.format`` fields are blanked) is read too. Docstrings are not code.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_FILE = re.compile(r"(?:.*/)?(?:test_\w+|conftest)\.py")
PATH_LOADERS = {"insert", "append", "spec_from_file_location", "run_path", "SourceFileLoader", "load_source"}


def _modules(folder: Path) -> set[str]:
    """Names ``import X`` reaches when ``folder`` (or a folder below it) is put on sys.path."""
    return {p.stem for p in folder.rglob("*.py") if p.stem != "__init__"} | \
        {p.parent.name for p in folder.rglob("__init__.py") if p.parent != folder}


def _code(path: Path) -> list[tuple[ast.AST, int | None]]:
    """(tree, None) for the file, and (tree, line) for every string constant in it that is Python code with an
    import (its findings are reported at the constant's line)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    trees: list[tuple[ast.AST, int | None]] = [(tree, None)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value \
                and "\n" in node.value:
            text = node.value.replace("{{", "\0").replace("}}", "\1")
            text = re.sub(r"\{[^{}]*\}", "None", text).replace("\0", "{").replace("\1", "}")
            try:
                trees.append((ast.parse(text), node.lineno))
            except SyntaxError:
                pass
    return trees


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _calls(tree: ast.AST):
    """(line, called name, string constants in its arguments) for every call but those to ``subprocess``
    (running a test file in a child pytest is not loading it)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Attribute)
                                               and isinstance(node.func.value, ast.Name)
                                               and node.func.value.id == "subprocess"):
            args = [*node.args, *(k.value for k in node.keywords)]
            yield node.lineno, _call_name(node), [s for a in args for s in _strings(a)]


def crooked_arrows(root: Path, skip: tuple[Path, ...] = ()) -> list[str]:
    """Every import or path load from bench/ into tests/, from tests/ into bench/, and of a test module by a test."""
    bench, tests = root / "bench", root / "tests"
    top = {p.stem for p in root.iterdir()}
    test_only = _modules(tests) - _modules(bench) - top - set(sys.stdlib_module_names)
    bench_only = _modules(bench) - _modules(tests) - top - set(sys.stdlib_module_names)
    found = []
    for path in sorted(bench.rglob("*.py")):
        for tree, at in _code(path):
            where = f"{path.relative_to(root)}:{{}}" + (" (code for a child process)" if at else "")
            for line, name in _imports(tree):
                first = name.split(".")[0]
                if first == "tests" or first in test_only:
                    found.append(f"{where.format(at or line)} imports {name} (a module of tests/)")
            docs = _docstrings(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs \
                        and (node.value == "tests" or node.value.startswith("tests/")):
                    found.append(f"{where.format(at or node.lineno)} names the tests/ folder ({node.value!r})")
    for path in sorted(tests.rglob("*.py")):
        if path in skip:
            continue
        for tree, at in _code(path):
            where = f"{path.relative_to(root)}:{{}}" + (" (code for a child process)" if at else "")
            for line, name in _imports(tree):
                parts = name.split(".")
                if parts[0] == "bench" or parts[0] in bench_only:
                    found.append(f"{where.format(at or line)} imports {name} (a module of bench/)")
                if any(p.startswith("test_") or p == "conftest" for p in parts):
                    found.append(f"{where.format(at or line)} imports {name} (a test module)")
            for line, called, strings in _calls(tree):
                if called in PATH_LOADERS and any(s == "bench" or s.startswith("bench/") for s in strings):
                    found.append(f"{where.format(at or line)} {called} reaches into bench/")
                named = [s for s in strings if TEST_FILE.fullmatch(s)]
                if named:
                    found.append(f"{where.format(at or line)} {called or 'a call'} is given the test file "
                                 f"{named[0]!r}")
    return sorted(set(found))


def test_bench_and_tests_do_not_reach_into_each_other():
    assert len(list((REPO / "tests").rglob("test_*.py"))) > 50, "the scan is not reading the tests"
    found = crooked_arrows(REPO, skip=(Path(__file__).resolve(),))  # this file's examples below name test files
    assert not found, "\n".join(found)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"bench/step_overhead.py": "", "tests/adversarial/corpus.py": "",
                      "tests/train/test_loop.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files, expected", [
    # the arrows of the tree before this test (issue 25): each must be found
    ({"bench/hostile_memory.py": 'CHILD = r"""\nimport json, sys\nsys.path.insert(0, {adv!r})\nimport corpus\n"""\n'
                                 'code = CHILD.format(adv=str(REPO / "tests" / "adversarial"))\n'},
     ["bench/hostile_memory.py:1 (code for a child process) imports corpus (a module of tests/)",
      "bench/hostile_memory.py:6 names the tests/ folder ('tests')"]),
    ({"tests/model/test_gc.py": 'def f():\n    sys.path.insert(0, str(REPO / "bench"))\n'
                                '    from step_overhead import saved_activation_bytes\n'},
     ["tests/model/test_gc.py:2 insert reaches into bench/",
      "tests/model/test_gc.py:3 imports step_overhead (a module of bench/)",
      "tests/model/test_gc.py:3 imports step_overhead.saved_activation_bytes (a module of bench/)"]),
    ({"tests/train/test_nonfinite.py":
      'spec = importlib.util.spec_from_file_location("_loop", Path(__file__).with_name("test_loop.py"))\n'},
     ["tests/train/test_nonfinite.py:1 spec_from_file_location is given the test file 'test_loop.py'",
      "tests/train/test_nonfinite.py:1 with_name is given the test file 'test_loop.py'"]),
    ({"tests/adversarial/test_runs.py": 'from test_corpus import _module\n'
                                        'm = _module(REPO / "tests" / "eval" / "test_evaluate.py")\n'},
     ["tests/adversarial/test_runs.py:1 imports test_corpus (a test module)",
      "tests/adversarial/test_runs.py:1 imports test_corpus._module (a test module)",
      "tests/adversarial/test_runs.py:2 _module is given the test file 'test_evaluate.py'"]),
    ({"tests/train/conftest.py": 'spec = spec_from_file_location("c", REPO / "tests/data/conftest.py")\n'},
     ["tests/train/conftest.py:1 spec_from_file_location is given the test file 'tests/data/conftest.py'"]),
    ({"tests/x/test_x.py": '"""Runs bench/step_overhead.py (a docstring: not code)."""\n'
                           'subprocess.run(["pytest", "tests/train/test_loop.py"])\n'}, []),
])
def test_the_check_finds_what_the_old_tree_had(tmp_path, files, expected):
    assert crooked_arrows(_tree(tmp_path, files)) == expected
