"""Reading benchmarks from disk: the MER-UniBench processed layout and helpers the official layouts share.

A scanner turns ``(root, split)`` into one :class:`RawItem` per annotated item of that
split. Nothing disappears: an item whose label, media or name is unusable comes back
with ``reject`` set to a one-line reason, so the builder's manifest can account for
every entry of the annotation. Media *contents* (corrupt files, missing audio streams,
sub-second clips) are not looked at here; the decoder finds those.

Items come back sorted by name (duplicates keep their file order), so what the builder
writes does not depend on the order of entries inside a label file.
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from affectverse_ds.benchmarks.base import Benchmark, LabelError, LabelTable, RawItem

log = logging.getLogger(__name__)

Scanner = Callable[[Path, str], list[RawItem]]

VIDEO_EXTS = (".mp4", ".avi")
REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class ProcessedLayout:
    """Where one benchmark keeps its files inside ``<root>/<process_dir>/``.

    Args:
        video_dirs: candidate video folders; the first that exists is used.
        audio_dirs: candidate 16 kHz wav folders (optional; audio then comes from the video).
        transcript: transcript CSV file name.
        text_column: CSV column holding the subtitle (``chinese`` / ``english`` / ``sentence``).
        video_exts: accepted video extensions, most preferred first.
    """

    video_dirs: tuple[str, ...]
    audio_dirs: tuple[str, ...] = ("audio", "subaudio")
    transcript: str = "transcription-engchi-polish.csv"
    text_column: str = "english"
    video_exts: tuple[str, ...] = field(default=VIDEO_EXTS)


# ----------------------------------------------------------------------------- text files

def decode_text(raw: bytes) -> str:
    """Bytes of a text file -> str, never raising.

    UTF-8 (with or without BOM) is what every benchmark ships; UTF-16 appears when a CSV
    went through a spreadsheet. Invalid bytes become U+FFFD, so one bad row costs that row's
    characters, not the file.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    return raw.decode("utf-8-sig", errors="replace")


def read_text(path: Path) -> str:
    return decode_text(Path(path).read_bytes())


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (header names stripped), tolerant of bad bytes.

    A malformed file (NUL bytes, a broken quote running to the end) yields the rows read
    before the problem and a warning, never an exception.
    """
    text = read_text(path).replace("\x00", "")
    rows: list[dict[str, str]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        for row in reader:
            if row:
                rows.append({key: (row[i] if i < len(row) else "") for i, key in enumerate(header)})
    except csv.Error as err:
        log.warning("%s: CSV unreadable after %d rows (%s); later rows ignored", path, len(rows), err)
    return rows


def read_transcript(path: Path, column: str, name_column: str = "name") -> dict[str, str]:
    """``name -> subtitle`` from a transcript CSV; a missing file or column gives ``{}`` with a warning.

    An empty cell is an empty subtitle (kept). When a name repeats, the first row wins.
    """
    if not Path(path).is_file():
        log.warning("no transcript %s: subtitles will be empty", path)
        return {}
    rows = read_csv_rows(path)
    if rows and (column not in rows[0] or name_column not in rows[0]):
        log.warning("%s has no %r/%r column (has %s): subtitles will be empty",
                    path, name_column, column, list(rows[0]))
        return {}
    out: dict[str, str] = {}
    for row in rows:
        out.setdefault(row[name_column].strip(), (row[column] or "").strip())
    return out


def subtitle_note(item: RawItem) -> str | None:
    """A manifest note for a *kept* item whose subtitle is empty or had invalid bytes, else None."""
    if not item.subtitle.strip():
        return "empty subtitle"
    if REPLACEMENT_CHAR in item.subtitle:
        return "subtitle had invalid UTF-8 bytes (replaced with U+FFFD)"
    return None


# ----------------------------------------------------------------------------- media files

def index_media(folder: Path | None, exts: Iterable[str]) -> dict[str, Path]:
    """``stem -> file`` for the media files in ``folder`` (one listing instead of a stat per item).

    AppleDouble files (``._x.avi``, found in archives made on macOS) are skipped. When a stem
    exists with several extensions, the one earliest in ``exts`` wins.
    """
    if folder is None or not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(exts)}
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        ext = ext.lower()
        if ext not in rank or entry.name.startswith("._") or not entry.is_file():
            continue
        if stem not in found or rank[ext] < rank[found[stem].suffix.lower()]:
            found[stem] = Path(entry.path)
    return found


def first_dir(base: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (base / name).is_dir():
            return base / name
    return None


# ----------------------------------------------------------------------------- items

def entry_value(entry: object, key: str, name: str) -> object:
    """``entry[key]`` of a label-file entry, as a LabelError when the entry is not a dict or lacks it."""
    if not isinstance(entry, dict):
        raise LabelError(f"{name}: label entry is {type(entry).__name__}, not a dict")
    if key not in entry:
        raise LabelError(f"{name}: label entry has no {key!r}")
    return entry[key]


def items_from_table(table: LabelTable, split: str) -> list[RawItem]:
    """One RawItem per entry of a LabelTable: usable labels, then the rejected ones with their reason."""
    items = [RawItem(name=name, split=split, label=label) for name, label in table.labels.items()]
    items += [RawItem(name=name, split=split, label=None, reject=reason) for name, reason in table.rejected.items()]
    return items


def reject(item: RawItem, reason: str) -> None:
    """Reject ``item`` unless it already carries a reason (the first problem found is the one reported)."""
    if item.reject is None:
        item.reject = reason
        item.label = None


def mark_duplicates(items: list[RawItem]) -> None:
    """Reject the second and later items of a name; the first keeps its label."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in seen:
            reject(item, f"duplicate name {item.name!r} (entry {i + 1}; first at entry {seen[item.name] + 1})")
        else:
            seen[item.name] = i


def finish(items: list[RawItem]) -> list[RawItem]:
    """Final order: by name (stable, so a duplicate stays after the entry it repeats)."""
    return sorted(items, key=lambda item: item.name)


def resolve_process_root(root: Path, process_dir: str) -> Path:
    """``root`` may be the folder holding ``<process_dir>/`` or that folder itself."""
    root = Path(root)
    return root / process_dir if (root / process_dir).is_dir() else root


def shown(path: Path, root: Path) -> str:
    """``path`` as a reason should show it: relative to the dataset root (the manifest then does not
    depend on where the dataset is mounted), absolute when outside it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def missing_media(folder: str, stem: str, exts: tuple[str, ...]) -> str:
    """The one-line reason of an item without its clip: ``no media file: subvideo/x.{mp4,avi}``."""
    ext = exts[0] if len(exts) == 1 else ".{" + ",".join(e.lstrip(".") for e in exts) + "}"
    return f"no media file: {folder}/{stem}{ext}"


def attach_media(
    items: list[RawItem],
    folder: str,
    videos: dict[str, Path],
    audios: dict[str, Path],
    subtitles: dict[str, str] | None,
    exts: tuple[str, ...],
    file_stem: Callable[[str], str] = lambda name: name,
) -> None:
    """Fill video/audio/subtitle by item name; an item without a video file is rejected.

    Args:
        folder: the video folder as the reason shows it (see :func:`shown`).
        videos / audios: item name -> file.
        subtitles: item name -> subtitle, or None to keep the subtitles the items already carry.
        file_stem: item name -> the file name the reason should mention (MELD's files drop the split).
    """
    for item in items:
        item.video = videos.get(item.name)
        item.audio = audios.get(item.name)
        if subtitles is not None:
            item.subtitle = subtitles.get(item.name, "")
        if item.video is None:
            reject(item, missing_media(folder, file_stem(item.name), exts))


# ----------------------------------------------------------------------------- the unibench scanner

def unibench_scanner(
    bench: Benchmark,
    layout: ProcessedLayout,
    entries: Callable[[Path, str], list[RawItem]] | None = None,
) -> Scanner:
    """Scanner for ``<root>/<bench.process_dir>/`` in the MER-UniBench processed layout.

    Args:
        bench: gives ``process_dir`` and ``load_labels``.
        layout: the benchmark's folder and transcript names.
        entries: ``(process_root, split) -> items`` for label files that can repeat a name
            (CSV); default: the benchmark's ``load_labels`` (npz dicts cannot repeat one).
    """

    def scan(root: Path, split: str) -> list[RawItem]:
        proc = resolve_process_root(root, bench.process_dir)
        items = entries(proc, split) if entries else items_from_table(bench.load_labels(proc, split), split)
        mark_duplicates(items)
        video_dir = first_dir(proc, layout.video_dirs)
        if video_dir is None:
            log.warning("%s: none of the video folders %s exists", proc, "/, ".join(layout.video_dirs) + "/")
        videos = index_media(video_dir, layout.video_exts)
        audios = index_media(first_dir(proc, layout.audio_dirs), (".wav",))
        subtitles = read_transcript(proc / layout.transcript, layout.text_column)
        folder = shown(video_dir or proc / layout.video_dirs[0], Path(root))
        attach_media(items, folder, videos, audios, subtitles, layout.video_exts)
        return finish(items)

    return scan
