"""Reading benchmarks from disk: the MER-UniBench processed layout and helpers the official layouts share.

Over 400 lines: every official layout's scanner calls these helpers (media index, names, duplicates, rejections).

A scanner turns ``(root, split)`` into one :class:`RawItem` per annotated item of that
split. Nothing disappears: an item whose label, media or name is unusable comes back
with ``reject`` set to a one-line reason, so the builder's manifest can account for
every entry of the annotation. Media *contents* (corrupt files, missing audio streams,
sub-second clips) are not looked at here; the decoder finds those.

Items come back sorted by name (duplicates keep their file order), so what the builder
writes does not depend on the order of entries inside a label file.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from affectverse_ds.benchmarks.base import Benchmark, LabelError, LabelTable, RawItem, register
from affectverse_ds.benchmarks.text_files import REPLACEMENT_CHAR, ROW_PROBLEM, read_csv_rows, row_problem

log = logging.getLogger(__name__)

Scanner = Callable[[Path, str], list[RawItem]]

VIDEO_EXTS = (".mp4", ".avi")


@dataclass(frozen=True)
class ProcessedLayout:
    """Where one benchmark keeps its files inside ``<root>/<process_dir>/``.

    Args:
        video_dirs: candidate video folders; the first that exists is used.
        audio_dirs: candidate 16 kHz wav folders (optional; audio then comes from the video).
        transcript: transcript CSV file name.
        text_column: CSV column holding the subtitle (``chinese`` / ``english`` / ``sentence``).
        video_exts: accepted video extensions, most preferred first.
        alt_text_columns: further columns read when ``text_column`` is absent (MERTools writes ``sentence``).
    """

    video_dirs: tuple[str, ...]
    audio_dirs: tuple[str, ...] = ("audio", "subaudio")
    transcript: str = "transcription-engchi-polish.csv"
    text_column: str = "english"
    video_exts: tuple[str, ...] = field(default=VIDEO_EXTS)
    alt_text_columns: tuple[str, ...] = ()

    @property
    def text_columns(self) -> tuple[str, ...]:
        return (self.text_column, *self.alt_text_columns)


# ----------------------------------------------------------------------------- transcripts

@dataclass
class Transcript:
    """Subtitles of a transcript CSV: ``texts`` (name -> text), the ``column`` read, the ``problem``
    that left them empty (missing file, no known column), which every item then carries as a note, and
    ``rejected`` (name -> reason): rows that could not be read whole, whose items are rejected."""

    texts: dict[str, str]
    column: str | None = None
    problem: str | None = None
    rejected: dict[str, str] = field(default_factory=dict)


def read_subtitles(path: Path, columns: tuple[str, ...], name_column: str = "name", shown_as: str = "") -> Transcript:
    """The first of ``columns`` present in the transcript CSV at ``path`` (first row of a repeated name wins)."""
    shown_as = shown_as or str(path)
    if not Path(path).is_file():
        return Transcript({}, None, f"no transcript {shown_as}")
    rows = read_csv_rows(path)
    if not rows:
        return Transcript({}, None, f"transcript {shown_as} has no rows")
    column = next((c for c in columns if c in rows[0]), None)
    if column is None or name_column not in rows[0]:
        wanted = "/".join(columns)
        return Transcript({}, None, f"transcript {shown_as} has no {name_column!r} and {wanted!r} columns "
                                    f"(has {', '.join(k for k in rows[0] if k != ROW_PROBLEM)})")
    out: dict[str, str] = {}
    rejected: dict[str, str] = {}
    for row in rows:
        name = row[name_column].strip()
        if problem := row_problem(row):
            if name and name not in out:
                rejected.setdefault(name, f"transcript row unreadable: {problem}")
            continue
        out.setdefault(name, (row[column] or "").strip())
    return Transcript(out, column, None, rejected)


def read_transcript(path: Path, column: str, name_column: str = "name") -> dict[str, str]:
    """``name -> subtitle`` from a transcript CSV; a missing file or column gives ``{}`` with a warning."""
    transcript = read_subtitles(path, (column,), name_column)
    if transcript.problem:
        log.warning("%s: subtitles will be empty", transcript.problem)
    return transcript.texts


# ----------------------------------------------------------------------------- subtitle text quality

# Kinds of the text-quality pass, as counted in the build record and named in manifest notes.
TEXT_KINDS = ("mojibake", "c1_control", "control", "replacement_char", "empty")
_MOJIBAKE_HINTS = ("\u00e2\u20ac", "\u00c3", "\u00c2", "\u00e2\u0080")


def normalise_subtitle(text: str) -> tuple[str, list[str]]:
    """Apply the documented subtitle rule (docs/datasets.md); returns (text, kinds found).

    1. ``mojibake``: text that is UTF-8 read as cp1252/latin-1 (``don\u00e2\u20ac\u2122t``) is decoded back
       (``don\u2019t``) when the round trip is exact.
    2. ``c1_control``: U+0080-U+009F (pre-2020 MELD CSVs) become the cp1252 character of that byte
       (U+0092 -> \u2019, U+0096 -> \u2013, U+0085 -> \u2026); the five bytes cp1252 leaves undefined are removed.
    3. ``control``: other control characters are removed; tab, CR and LF become a space.
    4. ``replacement_char``: U+FFFD (invalid bytes in the file) is kept, there is nothing to restore.
    5. ``empty``: empty after stripping; the item is kept with no text.
    """
    kinds: list[str] = []
    if any(hint in text for hint in _MOJIBAKE_HINTS):
        for enc in ("cp1252", "latin-1"):
            try:
                fixed = text.encode(enc).decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
            if fixed != text:
                text = fixed
                kinds.append("mojibake")
                break
    out, c1, control = [], False, False
    for ch in text:
        code = ord(ch)
        if 0x80 <= code <= 0x9F:
            c1 = True
            try:
                out.append(bytes([code]).decode("cp1252"))
            except UnicodeDecodeError:
                pass
        elif ch in "\t\r\n":
            control = True
            out.append(" ")
        elif code < 0x20 or code == 0x7F:
            control = True
        else:
            out.append(ch)
    text = "".join(out).strip()
    kinds += ["c1_control"] * c1 + ["control"] * control
    if REPLACEMENT_CHAR in text:
        kinds.append("replacement_char")
    if not text:
        kinds.append("empty")
    return text, kinds


TEXT_NOTES = {
    "mojibake": "subtitle mojibake repaired (UTF-8 read as cp1252)",
    "c1_control": "subtitle C1 control characters mapped to their cp1252 characters",
    "control": "subtitle control characters removed",
    "replacement_char": "subtitle had invalid UTF-8 bytes (replaced with U+FFFD)",
    "empty": "empty subtitle",
}


def text_quality(item: RawItem) -> list[str]:
    """Normalise ``item.subtitle`` in place and return the kinds found (also added to ``item.notes``)."""
    item.subtitle, kinds = normalise_subtitle(item.subtitle)
    for kind in kinds:
        note = TEXT_NOTES[kind]
        if note not in item.notes:
            item.notes.append(note)
    return kinds


def subtitle_note(item: RawItem) -> str | None:
    """A manifest note for a *kept* item whose subtitle is empty or had invalid bytes, else None."""
    if not item.subtitle.strip():
        return TEXT_NOTES["empty"]
    if REPLACEMENT_CHAR in item.subtitle:
        return TEXT_NOTES["replacement_char"]
    return None


# ----------------------------------------------------------------------------- media files

def index_media(folder: Path | None, exts: Iterable[str]) -> dict[str, Path]:
    """``stem -> file`` for the media files in ``folder`` (one listing instead of a stat per item).

    AppleDouble files (``._x.avi``, found in archives made on macOS) are skipped. When a stem
    exists with several extensions, the one earliest in ``exts`` wins. An entry whose type cannot be read
    (a symlink loop) is indexed: the item it belongs to is then rejected with the cause, the others built.
    """
    if folder is None or not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(exts)}
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        ext = ext.lower()
        if ext not in rank or entry.name.startswith("._"):
            continue
        try:
            if not entry.is_file():
                continue
        except OSError:  # a symlink loop: indexed, so its item is rejected naming it (``confine``), not the split
            pass
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
    items += [RawItem(name=name, split=split, label=None, reject=reason) for name, reason in table.repeated]
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


def finish(items: list[RawItem], shape: str | None = None) -> list[RawItem]:
    """Last step of every scanner: the text-quality pass on subtitles (:func:`normalise_subtitle`),
    the release ``shape`` read, and the final order: by name (stable, so a duplicate stays after the
    entry it repeats)."""
    for item in items:
        text_quality(item)
        if shape is not None and item.shape is None:
            item.shape = shape
    return sorted(items, key=lambda item: item.name)


def resolve_process_root(root: Path, process_dir: str | tuple[str, ...]) -> Path:
    """``root`` may be the folder holding ``<process_dir>/`` or that folder itself; with several known
    folder names (OV-MERD+: ``ovmerdplus-process`` in MER-UniBench, ``ovmerd-process``) the first present wins."""
    root = Path(root)
    names = (process_dir,) if isinstance(process_dir, str) else tuple(process_dir)
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def process_root_present(root: Path, bench: Benchmark) -> Path | None:
    """The benchmark's processed folder under ``root`` (or ``root`` itself when it is one), else None."""
    root = Path(root)
    for name in bench.process_dirs:
        if (root / name).is_dir():
            return root / name
    return root if root.name in bench.process_dirs and root.is_dir() else None


def plain_name(part: str) -> bool:
    """A file or folder name taken from label data that names something directly inside its folder."""
    return bool(part) and part not in (".", "..") and "/" not in part and "\\" not in part and "\x00" not in part


def confine(items: list[RawItem], root: Path) -> None:
    """Reject every item whose media path resolves (symlinks followed) outside ``root``."""
    base = Path(root).resolve()
    for item in items:
        for path in (item.video, item.audio):
            if path is None:
                continue
            try:
                Path(path).resolve().relative_to(base)
            except ValueError:
                reject(item, f"media path {shown(Path(path), Path(root))} resolves outside the dataset root")
                item.video = item.audio = None
                break
            except (OSError, RuntimeError) as err:  # a symlink loop: RuntimeError up to Python 3.12, OSError after
                why = err.strerror if isinstance(err, OSError) and err.strerror else "a symlink loop"
                reject(item, f"media path {shown(Path(path), Path(root))} cannot be resolved ({why})")
                item.video = item.audio = None
                break


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
        proc = resolve_process_root(root, bench.process_dirs)
        items = entries(proc, split) if entries else items_from_table(bench.load_labels(proc, split), split)
        mark_duplicates(items)
        video_dir = first_dir(proc, layout.video_dirs)
        if video_dir is None:
            log.warning("%s: none of the video folders %s exists", proc, "/, ".join(layout.video_dirs) + "/")
        videos = index_media(video_dir, layout.video_exts)
        audios = index_media(first_dir(proc, layout.audio_dirs), (".wav",))
        transcript = read_subtitles(proc / layout.transcript, layout.text_columns,
                                    shown_as=shown(proc / layout.transcript, Path(root)))
        folder = shown(video_dir or proc / layout.video_dirs[0], Path(root))
        attach_media(items, folder, videos, audios, transcript.texts, layout.video_exts)
        for item in items:
            if item.name in transcript.rejected:
                reject(item, transcript.rejected[item.name])
        if transcript.problem:
            log.warning("%s: subtitles will be empty", transcript.problem)
            for item in items:
                item.notes.append(transcript.problem)
        shape = f"unibench: {proc.name}/" + (f", {layout.transcript}:{transcript.column}" if transcript.column else "")
        return finish(items, shape)

    return scan


def register_processed(
    bench: Benchmark,
    layout: ProcessedLayout,
    official: Scanner | None = None,
    entries: Callable[[Path, str], list[RawItem]] | None = None,
    **extra,
) -> Benchmark:
    """Register ``bench`` with the readers of its layouts: the one tail every benchmark file ends with.

    Args:
        bench: the benchmark, not yet registered.
        layout: its MER-UniBench processed layout (kept as ``extra['layout']``; the fixture maker reads it).
        official: scanner of the release's own layout, if the builder can read that one too.
        entries: passed to :func:`unibench_scanner` (label files that can repeat a name).
        extra: further ``bench.extra`` keys: ``splits`` (unscored splits a builder may ask for),
            ``process_dirs`` (folder names to try), ``description``.
    """
    register(bench)
    bench.extra.update(layout=layout, **extra)
    bench.scanners["unibench"] = unibench_scanner(bench, layout, entries=entries)
    if official is not None:
        bench.scanners["official"] = official
    return bench
