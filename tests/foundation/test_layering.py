"""The package never imports the command-line folder ``data_prep/``: that folder holds thin entry
points over the library (the README's layout), so a library import of it would run backwards.

The scan reads every module's syntax tree (``ast``), so imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "affectverse_ds"
COMMAND_LINE = "data_prep"


def imports_of(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """(line, module) for every import statement in ``source``, at any depth; relative imports skipped."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def command_line_imports(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    return [(line, mod) for line, mod in imports_of(source, filename) if mod.split(".")[0] == COMMAND_LINE]


def test_the_scan_finds_an_import_inside_a_function():
    # the line affectverse_ds/demo.py had before the generator moved into the package
    old = ("def prepare_data(art):\n"
           "    from affectverse_ds.data.shards import build_shards\n"
           "    from data_prep.make_affectdyn import make_affectdyn\n"
           "    import data_prep.verify_shards as v\n")
    assert command_line_imports(old) == [(3, "data_prep.make_affectdyn"), (4, "data_prep.verify_shards")]
    assert command_line_imports("from affectverse_ds.benchmarks.affectdyn_gen import make_affectdyn\n") == []


def test_no_package_module_imports_data_prep():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50, f"only {len(modules)} modules under {PACKAGE}: the scan is not looking at the package"
    hits = [f"{path.relative_to(PACKAGE.parent)}:{line}: imports {mod}"
            for path in modules
            for line, mod in command_line_imports(path.read_text(encoding="utf-8"), str(path))]
    assert not hits, "library modules import the command-line folder:\n" + "\n".join(hits)
