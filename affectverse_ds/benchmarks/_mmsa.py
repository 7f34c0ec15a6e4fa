"""The MMSA release layout shared by CMU-MOSI, CMU-MOSEI, CH-SIMS and CH-SIMS v2.

``<root>/label.csv`` (``video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode``)
and ``<root>/Raw/<video_id>/<clip_id>.mp4``. Items are named ``{video_id}_{clip_id}``, the names
of the processed layout, so both layouts of a benchmark give the same keys.
"""
from __future__ import annotations

import logging
from pathlib import Path

from affectverse_ds.benchmarks.base import Label, LabelError, RawItem, checked_score
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, Scanner, finish, index_media, mark_duplicates, missing_media, read_csv_rows, reject,
)

log = logging.getLogger(__name__)

LABEL_FILE = "label.csv"
RAW_DIR = "Raw"
# MMSA calls its validation split "valid"; the processed layout (and this project) calls it "val".
MODES = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def _row_item(row: dict[str, str], split: str) -> RawItem:
    video_id, clip_id = row.get("video_id", "").strip(), row.get("clip_id", "").strip()
    name = f"{video_id}_{clip_id}"
    item = RawItem(name=name, split=split, label=None, subtitle=(row.get("text") or "").strip())
    try:
        item.label = Label(val=checked_score(row.get("label"), name))
    except LabelError as err:
        item.reject = str(err)
    if not video_id or not clip_id:
        reject(item, f"row without video_id/clip_id ({video_id!r}, {clip_id!r})")
    return item


def mmsa_scanner() -> Scanner:
    """Scanner for the MMSA layout; ``split`` is train / val / test (``mode`` train / valid / test)."""

    def scan(root: Path, split: str) -> list[RawItem]:
        if split not in MODES.values():
            raise KeyError(f"MMSA splits are train, val, test, not {split!r}")
        root = Path(root)
        label_file = root / LABEL_FILE
        if not label_file.is_file():
            raise FileNotFoundError(f"MMSA label file not found: {label_file}")
        all_rows = read_csv_rows(label_file)
        rows = [row for row in all_rows if MODES.get(row.get("mode", "").strip()) == split]
        stray = sum(1 for row in all_rows if row.get("mode", "").strip() not in MODES)
        if stray:  # in no split at all, so no scan can report them as items
            log.warning("%s: %d rows with a mode other than train/valid/test belong to no split", label_file, stray)
        items = [_row_item(row, split) for row in rows]
        mark_duplicates(items)
        raw_dirs: dict[str, dict[str, Path]] = {}  # video_id -> its clips, listed once
        for row, item in zip(rows, items):
            video_id, clip_id = row.get("video_id", "").strip(), row.get("clip_id", "").strip()
            if video_id not in raw_dirs:
                raw_dirs[video_id] = index_media(root / RAW_DIR / video_id, VIDEO_EXTS)
            item.video = raw_dirs[video_id].get(clip_id)
            if item.video is None:
                reject(item, missing_media(f"{RAW_DIR}/{video_id}", clip_id, VIDEO_EXTS))
        return finish(items)

    return scan
