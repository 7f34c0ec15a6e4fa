"""No package module grows past 400 lines without saying why: its docstring's first lines give the reason
("Over 400 lines...", issue 25), so a long module is a decision someone wrote down, not drift."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "affectverse_ds"
LIMIT = 400


def test_long_modules_say_why_in_their_docstring():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LIMIT:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if not any(line.startswith("Over 400 lines") for line in doc.splitlines()[:5]):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}: {text.count(chr(10))} lines")
    assert not unexplained, unexplained
