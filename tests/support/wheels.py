"""A small, hand-checkable set of the emotion-wheel tables G_w (the layout of AffectGPT's), for scoring tests."""
from __future__ import annotations

from pathlib import Path

import openpyxl

TINY_FORMAT = [
    ("happy", "happy,happiness,happily"),
    ("joy", "joy,joyful"),
    ("sad", "sad,sadness"),
    ("angry", "angry,anger"),
    ("anger", "anger,angered"),
    ("worried", "worried,worry"),
    ("calm", "calm"),
    ("fear", "fear,fearful"),
    ("fearless", "fearless,fear"),
    ("at a loss", "at a loss"),
    ("don’t care", "don’t care"),
    ("no words", ""),  # the real table has this row too: it makes '' a surface form
]
# (wheel word, synonyms) of run 1; the other runs stay empty
TINY_SYNONYMS = [
    ("Happy", "joy, cheerful"),
    ("sad", "sadness"),
    ("Mad", "angry, anger"),
    ("scared", "fear, worried"),
    ("brave", "fearless"),
    ("peaceful", "calm"),
    ("Confused", "at a loss"),
    ("Surprised", "no words"),
    ("indifferent", "don’t care"),
]
TINY_WHEELS = {
    1: [(" Happy ", " Brave ", "Peaceful"), (None, None, "Cheerful"), ("Sad", "Confused", None),
        ("Scared", "Worried", "Confused"), ("Mad", "Indifferent", None), ("Surprised", None, None)],
    2: [("Joy", "Happy", None), ("Fear", "Scared", None), ("Sadness", "Sad", None), ("Anger", "Mad", None)],
    3: [("Neutral", "Peaceful", None), ("Happy", None, None), ("Sad", None, None)],
    4: [("Joy", "Happy", None), ("Fear", "Scared", None), ("Sadness", "Sad", None), ("Anger", "Mad", None)],
    5: [("Joy", "Happy", None), ("Fear", "Scared", None), ("Sadness", "Sad", None), ("Anger", "Mad", None)],
}


def _write_xlsx(path: Path, header: list[str], rows: list[tuple]) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def write_tiny_wheels(root: Path) -> Path:
    """Write a small, hand-checkable set of the G_w tables (same layout as AffectGPT's)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "format.csv", "w", encoding="utf-8", newline="") as f:
        f.write("name,format\n" + "".join(f'{name},"{forms}"\n' for name, forms in TINY_FORMAT))
    header = [h for k in range(1, 9) for h in (f"word_run{k}", f"synonym_run{k}")]
    _write_xlsx(root / "synonym.xlsx", header, [(w, s) + (None,) * 14 for w, s in TINY_SYNONYMS])
    for i, rows in TINY_WHEELS.items():
        _write_xlsx(root / f"wheel{i}.xlsx", ["level1", "level2", "level3"], rows)
    return root
