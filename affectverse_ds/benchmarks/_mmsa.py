"""The MMSA release layout shared by CMU-MOSI, CMU-MOSEI, CH-SIMS and CH-SIMS v2.

``<root>/label.csv`` (``video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode``)
and ``<root>/Raw/<video_id>/<clip_id>.mp4``. CH-SIMS v2's own release (thuiar/ch-sims-v2) ships the
same columns as ``meta.csv``; whichever is present is read (``label.csv`` first) and recorded as the
item's shape. Items are named ``{video_id}_{clip_id}``, the names of the processed layout, so both
layouts of a benchmark give the same keys. A ``video_id``/``clip_id`` that is not a plain name
(``../../x``, an absolute path) is rejected before anything is looked up.
"""
from __future__ import annotations

import logging
from pathlib import Path

from affectverse_ds.benchmarks.base import Label, LabelError, LayoutNotFound, RawItem, SplitAbsent, checked_score
from affectverse_ds.benchmarks.layouts import (
    VIDEO_EXTS, Scanner, finish, index_media, mark_duplicates, missing_media, plain_name, reject,
)
from affectverse_ds.benchmarks.text_files import read_csv_rows, row_problem

log = logging.getLogger(__name__)

LABEL_FILE = "label.csv"
LABEL_FILES = (LABEL_FILE, "meta.csv")  # MMSA's name, CH-SIMS v2's release name
RAW_DIR = "Raw"
# MMSA calls its validation split "valid"; the processed layout (and this project) calls it "val".
MODES = {"train": "train", "valid": "val", "val": "val", "test": "test"}


def _row_item(row: dict[str, str], split: str) -> RawItem:
    video_id, clip_id = row.get("video_id", "").strip(), row.get("clip_id", "").strip()
    name = f"{video_id}_{clip_id}"
    item = RawItem(name=name, split=split, label=None, subtitle=(row.get("text") or "").strip())
    try:
        if problem := row_problem(row):
            raise LabelError(f"label row unreadable: {problem}")
        item.label = Label(val=checked_score(row.get("label"), name))
    except LabelError as err:
        item.reject = str(err)
    if not video_id or not clip_id:
        reject(item, f"row without video_id/clip_id ({video_id!r}, {clip_id!r})")
    elif not (plain_name(video_id) and plain_name(clip_id)):
        reject(item, f"video_id/clip_id {video_id!r}/{clip_id!r} is not a plain name (path outside {RAW_DIR}/)")
    return item


def mmsa_scanner() -> Scanner:
    """Scanner for the MMSA layout; ``split`` is train / val / test (``mode`` train / valid / test)."""

    def scan(root: Path, split: str) -> list[RawItem]:
        if split not in MODES.values():
            raise SplitAbsent(f"MMSA splits are train, val, test, not {split!r}")
        root = Path(root)
        label_name = next((name for name in LABEL_FILES if (root / name).is_file()), None)
        if label_name is None:
            raise LayoutNotFound("MMSA label file", root, LABEL_FILES)
        label_file = root / label_name
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
            if item.reject is not None and not (plain_name(video_id) and plain_name(clip_id)):
                continue  # never list a folder named by a path from the label file
            if video_id not in raw_dirs:
                raw_dirs[video_id] = index_media(root / RAW_DIR / video_id, VIDEO_EXTS)
            item.video = raw_dirs[video_id].get(clip_id)
            if item.video is None:
                reject(item, missing_media(f"{RAW_DIR}/{video_id}", clip_id, VIDEO_EXTS))
        return finish(items, f"mmsa: {label_name}, {RAW_DIR}/<video_id>/<clip_id>")

    return scan
