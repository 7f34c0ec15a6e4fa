"""The grouping G_w of MER-UniBench: free emotion words -> level-1 clusters of emotion wheel w.

Built from AffectGPT's wheel tables in one directory (``format.csv``, ``synonym.xlsx``,
``wheel1.xlsx`` .. ``wheel5.xlsx``), used exactly as they are: the published numbers
depend on their quirks (see ``docs/evaluation.md``, "Grouping G_w"):

1. ``format.csv`` maps a surface form to every base word whose row lists it.
2. ``synonym.xlsx`` maps a base word to the wheel words it is listed under (or is).
3. The candidates, sorted alphabetically, are tried in turn; the first present in
   wheel w gives its level-1 cluster. ``neutral`` is always dropped.

The tables ship with the package (``affectverse_ds/eval/wheels/``, Apache-2.0, see the README
there) and are the default everywhere; ``eval.wheel_dir`` or ``--wheel-dir`` points at others.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import openpyxl

from affectverse_ds.benchmarks.text_files import read_csv_rows, row_problem

N_WHEELS = 5
NEUTRAL = "neutral"
# One (word, synonyms) column pair per synonym-generation run in synonym.xlsx.
_SYNONYM_RUNS = 8
# AffectGPT's emotion_wheel/ tables, shipped as package data.
PACKAGED_WHEEL_DIR = Path(__file__).resolve().parent / "wheels"
WHEEL_FILES = ("format.csv", "synonym.xlsx", *(f"wheel{i}.xlsx" for i in range(1, N_WHEELS + 1)))


def _norm(value: object) -> str:
    return str(value).strip().lower()


def _xlsx_rows(path: Path) -> list[tuple]:
    """Rows of the first sheet, header excluded."""
    if not path.is_file():
        raise FileNotFoundError(f"emotion wheel file not found: {path}")
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return list(book.worksheets[0].iter_rows(min_row=2, values_only=True))
        finally:
            book.close()
    except Exception as err:  # noqa: BLE001  (zipfile, openpyxl and XML parsers raise many types for garbage)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{path}: not a readable .xlsx workbook ({type(err).__name__}: {first})") from None


def read_format_table(path: Path) -> dict[str, frozenset[str]]:
    """``format.csv`` -> {surface form: base words whose row lists it}.

    Args:
        path: the ``format.csv`` file (columns ``name,format``).

    Returns:
        Surface form -> frozenset of base words. Forms are kept as written (the
        file is already lower-case); a form listed in several rows maps to all of them.
    """
    if not path.is_file():
        raise FileNotFoundError(f"emotion wheel file not found: {path}")
    table: dict[str, set[str]] = defaultdict(set)
    for row in read_csv_rows(path):  # bounded lines: a 200 MB field is refused without being held
        if problem := row_problem(row):  # a vocabulary with a row missing would score silently differently
            raise ValueError(f"{path}: row unreadable ({problem})")
        if "name" not in row or "format" not in row:
            raise ValueError(f"{path}: no 'name' and 'format' columns")
        for form in row["format"].split(","):
            table[form].add(row["name"])
    return {form: frozenset(bases) for form, bases in table.items()}


def read_synonym_table(path: Path) -> dict[str, frozenset[str]]:
    """``synonym.xlsx`` -> {base word: wheel words it stands for}.

    Args:
        path: the ``synonym.xlsx`` file (columns ``word_run1, synonym_run1, ..., word_run8, synonym_run8``).

    Returns:
        Lower-cased word -> frozenset of lower-cased wheel words; every wheel word maps
        to itself, and each listed synonym to the wheel word of its row, over all runs.
    """
    table: dict[str, set[str]] = defaultdict(set)
    for row in _xlsx_rows(path):
        for run in range(_SYNONYM_RUNS):
            word, synonyms = row[2 * run], row[2 * run + 1]
            if word is None:
                continue
            wheel_word = _norm(word)
            table[wheel_word].add(wheel_word)
            for synonym in str(synonyms or "").split(","):
                if synonym.strip():
                    table[_norm(synonym)].add(wheel_word)
    return {word: frozenset(words) for word, words in table.items()}


def read_wheel(path: Path) -> dict[str, str]:
    """``wheelN.xlsx`` -> {wheel word at any level: its level-1 cluster}.

    Args:
        path: a wheel file with columns ``level1, level2, level3``; a blank level-1
            cell continues the cluster above (merged cells in the spreadsheet).

    Returns:
        Lower-cased, stripped word -> level-1 cluster. A word listed under two clusters
        keeps the later one: the published HIT numbers are only reproduced that way.
    """
    clusters: dict[str, str] = {}
    level1 = None
    for row in _xlsx_rows(path):
        if row[0] is not None:
            level1 = _norm(row[0])
        for cell in row[:3]:
            if cell is not None and level1 is not None:
                clusters[_norm(cell)] = level1
    return clusters


@dataclass
class EmotionWheels:
    """The tables of G_w, with a per-(word, wheel) cache.

    Args:
        surface_to_base: from ``format.csv`` (:func:`read_format_table`).
        base_to_wheel_words: from ``synonym.xlsx`` (:func:`read_synonym_table`).
        clusters: one dict per wheel, from ``wheelN.xlsx`` (:func:`read_wheel`).
    """

    surface_to_base: dict[str, frozenset[str]]
    base_to_wheel_words: dict[str, frozenset[str]]
    clusters: tuple[dict[str, str], ...]
    _cache: dict[tuple[str, int], str | None] = field(default_factory=dict, repr=False)

    @property
    def n_wheels(self) -> int:
        return len(self.clusters)

    def surface_forms(self) -> list[str]:
        """Every non-empty surface form of ``format.csv`` (the extractor's vocabulary)."""
        return sorted(form for form in self.surface_to_base if form.strip())

    def candidates(self, word: str) -> list[str]:
        """Wheel words a free word may stand for, sorted (the order G_w tries them in)."""
        found: set[str] = set()
        for base in self.surface_to_base.get(word.strip().lower(), ()):
            found |= self.base_to_wheel_words.get(base, frozenset())
        return sorted(found)

    def group(self, word: str, wheel: int) -> str | None:
        """G_w of one word.

        Args:
            word: a free emotion word or phrase (any case, surrounding spaces ignored).
            wheel: wheel index, 0-based (0 is ``wheel1.xlsx``).

        Returns:
            The level-1 cluster, or None when the word is dropped (not in the tables,
            in no cluster of this wheel, empty, or neutral).
        """
        key = word.strip().lower()
        # format.csv's 'no words' row has an empty format list, so '' is a surface form
        # there; an empty answer must still score as empty.
        if not key or key == NEUTRAL:
            return None
        if (key, wheel) not in self._cache:
            self._cache[(key, wheel)] = self._first_cluster(key, wheel)
        return self._cache[(key, wheel)]

    def _first_cluster(self, key: str, wheel: int) -> str | None:
        table = self.clusters[wheel]
        for candidate in self.candidates(key):
            if candidate in table:
                cluster = table[candidate]
                return None if cluster == NEUTRAL else cluster
        return None

    def group_set(self, words: Iterable[str], wheel: int) -> frozenset[str]:
        """G_w of a word list: the set of clusters of the words that are not dropped."""
        return frozenset(c for c in (self.group(w, wheel) for w in words) if c is not None)

    def group_all(self, words: Iterable[str]) -> tuple[frozenset[str], ...]:
        """:meth:`group_set` on every wheel, in wheel order."""
        words = list(words)
        return tuple(self.group_set(words, w) for w in range(self.n_wheels))


def load_wheels(wheel_dir: str | Path) -> EmotionWheels:
    """Read the G_w tables from a directory (cached per resolved path: the xlsx parse is slow).

    Args:
        wheel_dir: directory holding ``format.csv``, ``synonym.xlsx`` and ``wheel1.xlsx`` .. ``wheel5.xlsx``.

    Returns:
        The :class:`EmotionWheels` of that directory.
    """
    return _load_wheels(str(Path(wheel_dir).resolve()))


@functools.lru_cache(maxsize=4)
def _load_wheels(wheel_dir: str) -> EmotionWheels:
    root = Path(wheel_dir)
    return EmotionWheels(
        surface_to_base=read_format_table(root / "format.csv"),
        base_to_wheel_words=read_synonym_table(root / "synonym.xlsx"),
        clusters=tuple(read_wheel(root / f"wheel{i}.xlsx") for i in range(1, N_WHEELS + 1)),
    )


def wheel_dir_for(eval_cfg) -> Path:
    """The wheel folder an evaluation config asks for.

    ``eval.wheel_dir`` when set, else the tables shipped with the package (:data:`PACKAGED_WHEEL_DIR`).
    """
    return Path(eval_cfg.wheel_dir) if eval_cfg.wheel_dir else PACKAGED_WHEEL_DIR
