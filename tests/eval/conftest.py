"""Fixtures of the evaluation tests: the reference data, and a tiny self-made set of wheel tables.

``shared_data`` (``tests/reference/``, carried by the repository) comes from ``tests/conftest.py``;
a test needing one file under it asks ``reference(relative path)``. ``emotion_wheel/...`` resolves
to the wheels shipped with the package. A missing path fails the test (the data is in the clone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import openpyxl
import pytest


def require(path: Path) -> Path:
    """The path, failing the calling test when it is absent (reference data is part of the repository)."""
    assert path.exists(), f"reference data missing from the checkout: {path}"
    return path


@pytest.fixture(scope="session")
def reference(shared_data: Path) -> Callable[[str], Path]:
    """``reference("merbench/...")`` -> that path under ``tests/reference``; ``reference("emotion_wheel")``
    -> the package's wheels (``affectverse_ds/eval/wheels``)."""
    from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR

    def resolve(relative: str) -> Path:
        head, _, rest = relative.partition("/")
        root = PACKAGED_WHEEL_DIR if head == "emotion_wheel" else shared_data / head
        return require(root / rest if rest else root)

    return resolve


@pytest.fixture(scope="session")
def wheel_dir(reference) -> Path:
    return reference("emotion_wheel")


@pytest.fixture(scope="session")
def real_wheels(wheel_dir: Path):
    from affectverse_ds.eval.wheel import load_wheels
    return load_wheels(wheel_dir)


# ----------------------------------------------------------------------------- tiny wheel tables

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


@pytest.fixture(scope="session")
def tiny_wheel_dir(tmp_path_factory) -> Path:
    return write_tiny_wheels(tmp_path_factory.mktemp("tiny_wheels"))


@pytest.fixture(scope="session")
def tiny_wheels(tiny_wheel_dir: Path):
    from affectverse_ds.eval.wheel import load_wheels
    return load_wheels(tiny_wheel_dir)


def write_label_npz(path: Path, member: str, entries: dict[str, dict]) -> Path:
    """A MER-UniBench style label file: ``{member: {name: {'emo':..., 'val':...}}}`` pickled in an npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{member: np.array(entries, dtype=object)})
    return path


@pytest.fixture(scope="session")
def label_npz() -> Callable[[Path, str, dict], Path]:
    """The :func:`write_label_npz` writer, for tests that need a small label file."""
    return write_label_npz
