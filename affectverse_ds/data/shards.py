"""Write a benchmark split into WebDataset tar shards, plus ``sizes.json`` and ``manifest.parquet``.

Over 400 lines: the build and its dry run (inspect_root) share the scanner, de-duplication and manifest rows.

A process pool decodes items; one writer consumes the results in item order, so the
shards are byte-identical whatever the number of workers. Items are sorted by sample
key first, so the scanner's directory-listing order does not leak into the shards.

Shards are written by ``webdataset.TarWriter`` with a fixed mtime, owner and mode, so rebuilding
gives identical bytes (TarWriter orders a sample's members by extension: frames, flac, json).
A shard is written to ``<shard>.tar.tmp`` and renamed when complete: a ``.tar`` on disk is
always a finished shard, which is what ``resume`` relies on.

Manifest: one row per scanned item, ``accepted`` (with the shard it went to and, in
``reason``, any non-fatal notes such as "no audio stream") or ``rejected`` (with the reason).
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import multiprocessing as mp
import os
import signal
import sys
import tarfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import webdataset as wds
from tqdm import tqdm

from affectverse_ds import files
from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.benchmarks.base import Benchmark, LayoutNotFound, RawItem, SplitAbsent
from affectverse_ds.benchmarks.layouts import TEXT_NOTES, confine, process_root_present, subtitle_note, text_quality
from affectverse_ds.chat import build_messages, render
from affectverse_ds.data import schema
from affectverse_ds.data.media import Clip, DecodeConfig, MediaError, decode_clip

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TAR_MTIME = 0  # fixed member metadata: rebuilds are byte-identical
# in the build record: a resume never appends shards of another member order to finished ones
TAR_WRITER = "webdataset.TarWriter, members by extension"
BLOCK = 512


@dataclass(frozen=True)
class ShardLimits:
    """When a shard is closed: at ``max_count`` samples, or before a sample would push it past ``max_bytes``."""

    max_count: int = 1000
    max_bytes: int = 512 * 1024 ** 2


@dataclass
class Encoded:
    """One item after the worker: its webdataset sample (None when rejected) and its manifest row."""

    key: str
    members: dict[str, str | bytes] | None
    row: dict


@dataclass
class BuildReport:
    """Outcome of one benchmark/split build."""

    benchmark: str
    split: str
    items: int
    accepted: int
    rejected: int
    shards: list[str]
    record: dict = field(default_factory=dict)  # what the scan found (scan_record): shapes, text quality...


MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("benchmark", pa.string()), ("name", pa.string()), ("split", pa.string()),
    ("status", pa.string()), ("reason", pa.string()), ("shard", pa.string()), ("label", pa.string()),
    ("duration", pa.float64()), ("frames", pa.int32()), ("audio_seconds", pa.float64()), ("source", pa.string()),
    ("shape", pa.string()),  # the release shape the scanner read (RawItem.shape)
])


# ----------------------------------------------------------------------------- one item (runs in workers)

def encode_item(item: RawItem, bench: Benchmark, root: Path, cfg: DecodeConfig) -> Encoded:
    """Decode one item and build its tar members and manifest row; never raises for bad media.

    Args:
        item: the scanned item.
        bench: its benchmark (question/target templates).
        root: dataset root; ``source`` paths in the metadata are stored relative to it.
        cfg: decoding settings.

    Returns:
        The :class:`Encoded` item (``members`` None when rejected).
    """
    key = schema.sample_key(bench.name, item.split, item.name)
    reason = item.reject
    if reason is None and item.label is None:
        reason = "no label"
    if reason is None and item.video is None:
        reason = "no video file"
    if reason is None:  # the scanners confine media to the root; a hand-made item is checked here too
        probe = RawItem(item.name, item.split, item.label, video=item.video, audio=item.audio)
        confine([probe], root)
        reason = probe.reject
    if reason is not None:
        return Encoded(key, None, _row(key, bench, item, "rejected", reason))
    try:
        clip = decode_clip(Path(item.video), item.audio, item.segment, item.crop, cfg)
    except MediaError as err:
        return Encoded(key, None, _row(key, bench, item, "rejected", str(err), source=_rel(item.video, root)))
    except Exception as err:  # noqa: BLE001  (an unforeseen decoder failure must not stop a long build)
        reason = f"decode failed: {type(err).__name__}: {err}"
        return Encoded(key, None, _row(key, bench, item, "rejected", reason, source=_rel(item.video, root)))
    meta = build_meta(item, bench, clip, root, cfg)
    return Encoded(key, sample_members(key, meta, clip, cfg), meta_row(key, meta, shard=None))


def sample_meta(*, benchmark: str, split: str, name: str, label: dict, duration: float | None, fps: float,
                n_frames: int, audio_samples: int, sample_rate: int, subtitle: str, question: str,
                answer: str) -> dict:
    """The fields the loader's encoder reads (modalities, the chat messages and their rendering), for the
    builder's samples and for ``predict``'s clips alike; ``duration`` None leaves that field out."""
    has_video, has_audio = n_frames > 0, audio_samples > 0
    messages = build_messages(question, subtitle, answer, has_video=has_video, has_audio=has_audio)
    meta = {"benchmark": benchmark, "split": split, "name": name, "label": label}
    if duration is not None:
        meta["duration"] = duration
    meta.update({
        "fps": fps, "n_frames": n_frames, "audio_samples": audio_samples, "sample_rate": sample_rate,
        "modalities": {"video": has_video, "audio": has_audio, "text": bool(subtitle.strip())},
        "subtitle": subtitle, "question": question, "answer": answer,
        "messages": messages, "text": render(messages),
    })
    return meta


def build_meta(item: RawItem, bench: Benchmark, clip: Clip, root: Path, cfg: DecodeConfig) -> dict:
    """The sample's JSON metadata (schema.META_FIELDS plus ``notes``, ``segment``, ``crop``, ``audio_source``)."""
    has_audio = clip.audio is not None and len(clip.audio) > 0
    meta = sample_meta(
        benchmark=bench.name, split=item.split, name=item.name, label=item.label.to_json(),
        duration=round(clip.duration, 6), fps=cfg.fps, n_frames=len(clip.frames),
        audio_samples=len(clip.audio) if has_audio else 0, sample_rate=cfg.sample_rate,
        subtitle=item.subtitle, question=bench.question, answer=bench.target(item.label))
    meta.update({
        "source": _rel(item.video, root), "source_sha256": file_sha256(str(item.video)),
        "synthetic": bench.synthetic, "notes": clip.notes + _item_notes(item), "shape": item.shape,
        "segment": list(item.segment) if item.segment else None, "crop": item.crop,
        "audio_source": _rel(item.audio, root) if item.audio is not None else None,
    })
    problems = schema.validate_meta(meta)
    if problems:  # a bug here, not bad input: fail loudly rather than write a sample the loader rejects
        raise AssertionError(f"{item.name}: metadata breaks the shard contract: {problems}")
    return meta


def _item_notes(item: RawItem) -> list[str]:
    """The scanner's notes (subtitle repairs, no valence, re-cut clip), plus the subtitle note of an
    item that did not come through a scanner."""
    note = subtitle_note(item)
    return list(item.notes) + ([note] if note and note not in item.notes else [])


def sample_members(key: str, meta: dict, clip: Clip, cfg: DecodeConfig) -> dict[str, str | bytes]:
    """A sample as ``webdataset.TarWriter`` writes it: ``__key__`` and extension -> bytes (json, frames, audio)."""
    members: dict[str, str | bytes] = {"__key__": key}
    members[schema.META_EXT] = json.dumps(meta, ensure_ascii=False, sort_keys=True).encode()
    members.update((schema.frame_ext(i), jpg) for i, jpg in enumerate(clip.frames))
    if meta["modalities"]["audio"]:
        buf = io.BytesIO()
        sf.write(buf, clip.audio, cfg.sample_rate, format="FLAC", subtype="PCM_16")
        members[schema.AUDIO_EXT] = buf.getvalue()
    return members


def meta_row(key: str, meta: dict, shard: str | None) -> dict:
    """Manifest row of an accepted sample, from its metadata alone (so ``resume`` can rebuild it from a shard)."""
    return {
        "key": key, "benchmark": meta["benchmark"], "name": meta["name"], "split": meta["split"],
        "status": "accepted", "reason": "; ".join(meta.get("notes") or []), "shard": shard,
        "label": json.dumps(meta["label"], sort_keys=True), "duration": float(meta["duration"]),
        "frames": meta["n_frames"], "audio_seconds": meta["audio_samples"] / meta["sample_rate"],
        "source": meta["source"], "shape": meta.get("shape"),
    }


def _row(key, bench, item, status, reason, source=None) -> dict:
    label = item.label.to_json() if item.label is not None else None
    return {"key": key, "benchmark": bench.name, "name": item.name, "split": item.split, "status": status,
            "reason": reason, "shard": None, "label": json.dumps(label, sort_keys=True), "duration": None,
            "frames": 0, "audio_seconds": 0.0, "source": source, "shape": item.shape}


def _rel(path, root: Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


@lru_cache(maxsize=64)  # IEMOCAP cuts many utterances from one dialog video: hash it once per worker
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return files.file_sha256(path)


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (cached per process by path, size and mtime)."""
    st = os.stat(path)
    return _sha256_cached(path, st.st_size, st.st_mtime_ns)


# ----------------------------------------------------------------------------- tar writing

def _tar_size(sample: dict[str, str | bytes]) -> int:
    """Bytes a sample adds to a tar: a header block per member plus its data padded to whole blocks."""
    return sum(BLOCK + -(-len(data) // BLOCK) * BLOCK for ext, data in sample.items() if not ext.startswith("__"))


class ShardWriter:
    """Writes samples into numbered shards, each first as ``.tar.tmp`` then renamed to ``.tar``.

    Args:
        out: output folder.
        benchmark, split: shard name parts (``schema.SHARD_PATTERN``).
        limits: when to start a new shard.
        first_index: index of the first shard written (``resume`` continues after finished shards).
    """

    def __init__(self, out: Path, benchmark: str, split: str, limits: ShardLimits, first_index: int = 0):
        self.out, self.benchmark, self.split, self.limits = Path(out), benchmark, split, limits
        self.index = first_index
        self.tar = self.file = None
        self.count = self.bytes = 0
        self.sizes: dict[str, int] = {}

    def shard_name(self, index: int) -> str:
        return schema.SHARD_PATTERN.format(benchmark=self.benchmark, split=self.split, index=index)

    def add(self, sample: dict[str, str | bytes]) -> str:
        """Append one sample (``__key__`` and extension -> bytes); returns the shard file name it went to."""
        size = _tar_size(sample)
        if self.tar is not None and (self.count >= self.limits.max_count
                                     or self.bytes + size > self.limits.max_bytes):
            self.close()
        if self.tar is None:
            self._open()
        self.tar.write(sample)
        self.count += 1
        self.bytes += size
        return self.shard_name(self.index)

    def _open(self) -> None:
        self.file = open(self.out / (self.shard_name(self.index) + ".tmp"), "wb")
        # fixed member metadata, so rebuilds are byte-identical (bench/tar_writer_identity.py measures it)
        self.tar = wds.TarWriter(self.file, encoder=False, mtime=TAR_MTIME, mode=0o644, user="", group="")
        self.count = self.bytes = 0

    def close(self) -> None:
        """Finish the current shard: flush to disk, then rename so it appears complete or not at all."""
        if self.tar is None:
            return
        self.tar.close()  # ends the tar; the file, opened here, stays open until it is on disk
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        name = self.shard_name(self.index)
        os.replace(self.out / (name + ".tmp"), self.out / name)
        self.sizes[name] = self.count
        self.tar = self.file = None
        self.index += 1


# ----------------------------------------------------------------------------- the build

_WORKER: dict = {}


def _die_with_parent(parent: int) -> None:
    """End this worker when the builder process that started it dies (even by SIGKILL), so a killed
    build never leaves decoders running. Linux: the kernel's parent-death signal; elsewhere a thread
    polling the parent pid."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _init_worker(bench_name: str, root: str, cfg: DecodeConfig, parent: int) -> None:
    _die_with_parent(parent)
    _WORKER.update(bench=get_benchmark(bench_name), root=Path(root), cfg=cfg)


def _work(item: RawItem) -> Encoded:
    return encode_item(item, _WORKER["bench"], _WORKER["root"], _WORKER["cfg"])


@contextlib.contextmanager
def _encoded_stream(items: list[RawItem], bench: Benchmark, root: Path, cfg: DecodeConfig,
                    workers: int) -> Iterator[Iterable[Encoded]]:
    """Encoded items in input order, from a process pool (or in-process for one worker)."""
    if workers <= 1:
        yield (encode_item(item, bench, root, cfg) for item in items)
        return
    # fork: workers inherit the registry and imports, so a pool starts in milliseconds.
    # ProcessPoolExecutor rather than Pool: a worker killed by a decoder crash fails the build
    # (BrokenProcessPool; --resume keeps the finished shards) instead of hanging it.
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_init_worker,
                             initargs=(bench.name, str(root), cfg, os.getpid())) as pool:
        yield pool.map(_work, items)


def _dedupe(items: list[RawItem], bench: Benchmark) -> list[RawItem]:
    """Sort by key; a repeated key becomes a rejected item rather than two samples with one key."""
    seen: set[str] = set()
    out = []
    for item in sorted(items, key=lambda it: schema.sample_key(bench.name, it.split, it.name)):
        key = schema.sample_key(bench.name, item.split, item.name)
        if key in seen and item.reject is None:
            item = replace(item, reject=f"duplicate key {key!r}", notes=list(item.notes))  # keeps its shape
        seen.add(key)
        out.append(item)
    return out


def build_split(
    bench: Benchmark, split: str, items: list[RawItem], root: Path, out: Path, *,
    workers: int = 1, resume: bool = False, cfg: DecodeConfig = DecodeConfig(),
    limits: ShardLimits = ShardLimits(), progress: bool = True,
) -> BuildReport:
    """Write the shards of one benchmark split from already scanned items.

    Args:
        bench: the benchmark.
        split: split name (shard names use it).
        items: every annotated item of the split (rejected ones included).
        root: dataset root, for relative ``source`` paths.
        out: output folder (shared by several benchmark/splits; sizes.json and the manifest are merged).
        workers: decoding processes.
        resume: keep finished shards of an interrupted build of the same settings and write the rest.
        cfg: decoding settings.
        limits: shard size limits.
        progress: show a tqdm bar.

    Returns:
        A :class:`BuildReport`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = _dedupe(items, bench)
    for item in items:  # scanners did this already; items made by hand get the same subtitle rule
        text_quality(item)
    prefix = f"{bench.name}-{split}-"
    record = scan_record(items)
    _check_state(out, prefix, items, bench, split, cfg, limits, resume, record=record)
    done_rows, done_sizes = _finished_shards(out, prefix) if resume else ([], {})
    done_keys = {row["key"] for row in done_rows}
    # scanner-rejected items (duplicates of a finished key among them) are redone: they cost nothing
    todo = [it for it in items
            if it.reject is not None or schema.sample_key(bench.name, it.split, it.name) not in done_keys]
    writer = ShardWriter(out, bench.name, split, limits, first_index=len(done_sizes))
    rows = list(done_rows)
    with _encoded_stream(todo, bench, root, cfg, workers) as stream:
        # the bar (and its monitor thread) starts after the pool has forked
        bar = tqdm(total=len(items), initial=len(done_rows), unit="clip", desc=f"{bench.name}/{split}",
                   disable=not progress, dynamic_ncols=True,
                   mininterval=0.1 if sys.stderr.isatty() else 30.0)  # batch logs: a line every 30 s
        for enc in stream:
            if enc.members is not None:
                enc.row["shard"] = writer.add(enc.members)
            rows.append(enc.row)
            bar.update(1)
    writer.close()
    bar.close()
    sizes = {**done_sizes, **writer.sizes}
    _merge_outputs(out, bench.name, split, prefix, rows, sizes)
    accepted = sum(r["status"] == "accepted" for r in rows)
    return BuildReport(bench.name, split, len(rows), accepted, len(rows) - accepted, sorted(sizes), record)


def _shard_paths(out: Path, prefix: str, suffix: str) -> list[Path]:
    return sorted(p for p in out.glob(f"{prefix}*{suffix}") if p.name[len(prefix):-len(suffix)].isdigit())


def _check_state(out, prefix, items, bench, split, cfg, limits, resume, record=None) -> None:
    """Write the build record (settings, items, plus ``record``: shapes read, text quality, rejections);
    refuse to resume a build made with other settings or other items (``record`` is not compared)."""
    for tmp in _shard_paths(out, prefix, ".tar.tmp"):
        tmp.unlink()  # an interrupted shard: never reused
    keys = "\n".join(schema.sample_key(bench.name, it.split, it.name) for it in items)
    state = {"benchmark": bench.name, "split": split, "decode": asdict(cfg), "limits": asdict(limits),
             "items": len(items), "keys_sha256": hashlib.sha256(keys.encode()).hexdigest(), "writer": TAR_WRITER}
    path = out / f"{prefix[:-1]}.build.json"
    if resume and path.exists():
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in state} != state:
            changed = sorted(k for k in state if old.get(k) != state[k])
            raise ValueError(f"cannot resume {path.name}: settings or items changed ({', '.join(changed)}); "
                             f"rebuild without --resume")
    if not resume:
        for shard in _shard_paths(out, prefix, ".tar"):
            shard.unlink()  # stale shards of an earlier build would otherwise be picked up by globs
    files.atomic_write(path, json.dumps({**state, **(record or {})}, indent=1, sort_keys=True).encode())


def _finished_shards(out: Path, prefix: str) -> tuple[list[dict], dict[str, int]]:
    """Manifest rows and sizes of the finished shards, read back from their metadata members."""
    rows, sizes = [], {}
    for i, path in enumerate(_shard_paths(out, prefix, ".tar")):
        if path.name != f"{prefix}{i:06d}.tar":
            raise ValueError(f"cannot resume: shard {prefix}{i:06d}.tar missing before {path.name}")
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith("." + schema.META_EXT):
                    meta = json.loads(tar.extractfile(member).read())
                    rows.append(meta_row(member.name[: -len(schema.META_EXT) - 1], meta, path.name))
        sizes[path.name] = sum(r["shard"] == path.name for r in rows)
    return rows, sizes


def _merge_outputs(out: Path, benchmark: str, split: str, prefix: str, rows: list[dict],
                   sizes: dict[str, int]) -> None:
    """Replace this split's entries in sizes.json and manifest.parquet, under a lock (SLURM array tasks share ``out``)."""
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sizes_path = out / schema.SIZES_FILE
        all_sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
        all_sizes = {k: v for k, v in all_sizes.items() if not k.startswith(prefix)} | sizes
        files.atomic_write(sizes_path, json.dumps(dict(sorted(all_sizes.items())), indent=1).encode())
        manifest_path = out / schema.MANIFEST_FILE
        old = pq.read_table(manifest_path).to_pylist() if manifest_path.exists() else []
        keep = [r for r in old if (r["benchmark"], r["split"]) != (benchmark, split)]
        merged = sorted(keep + rows, key=lambda r: (r["benchmark"], r["split"], r["key"]))
        table = pa.Table.from_pylist(merged, schema=MANIFEST_SCHEMA)
        files.atomic_write(manifest_path, lambda tmp: pq.write_table(table, tmp))


# ----------------------------------------------------------------------------- scanning entry points

def split_names(bench: Benchmark) -> list[str]:
    """Splits a benchmark may have: its train splits, its test split and any listed in ``extra['splits']``."""
    names = [*bench.train_splits, bench.test_split, *bench.extra.get("splits", ())]
    return list(dict.fromkeys(names))


def scan_split(bench: Benchmark, layout: str, root: Path, split: str) -> list[RawItem]:
    """Every annotated item of one split, each media path confined to ``root`` (symlinks followed)."""
    if layout not in bench.scanners:
        raise KeyError(f"{bench.name} has no scanner for layout {layout!r} (has {', '.join(bench.scanners) or 'none'})")
    items = bench.scanners[layout](Path(root), split)
    confine(items, Path(root))
    return items


def build_shards(benchmark: str, layout: str, root: Path, split: str, out: Path, **kwargs) -> BuildReport:
    """Scan one benchmark split in its on-disk layout and write its shards (kwargs: see :func:`build_split`).

    Args:
        benchmark: registry name.
        layout: ``unibench`` or ``official`` (a key of ``Benchmark.scanners``).
        root: dataset root as the scanner expects it.
        split: split name.
        out: output folder.

    Returns:
        A :class:`BuildReport`.
    """
    bench = get_benchmark(benchmark)
    items = scan_split(bench, layout, Path(root), split)
    return build_split(bench, split, items, Path(root), Path(out), **kwargs)


# ----------------------------------------------------------------------------- scanning a root (dry run, --all)

_TEXT_KIND = {note: kind for kind, note in TEXT_NOTES.items()}


def reason_kind(reason: str) -> str:
    """A rejection reason -> its kind for the scan table (``no media file``, ``duplicate``, ``path``, ``label``)."""
    if reason.startswith("no media file") or reason == "no video file":
        return "no media file"
    if "duplicate" in reason or "repeats a name" in reason:
        return "duplicate"
    if "outside the dataset root" in reason or "not a plain name" in reason or "cannot be resolved" in reason:
        return "path outside root"
    return "label"


def scan_record(items: list[RawItem]) -> dict:
    """What the build record and the scan table say about a split's items before decoding."""
    text = Counter(_TEXT_KIND[n] for item in items for n in item.notes if n in _TEXT_KIND)
    return {
        "shapes": sorted({item.shape for item in items if item.shape}),
        "scanned": len(items),
        "media_found": sum(item.video is not None for item in items),
        "media_missing": sum(bool(item.reject) and reason_kind(item.reject) == "no media file" for item in items),
        "rejected_by_reason": dict(sorted(Counter(reason_kind(i.reject) for i in items if i.reject).items())),
        "text_quality": dict(sorted(text.items())),
    }


@dataclass
class SplitScan:
    """One line of the scan table.

    ``status``: ``ok``; ``absent`` (the benchmark is not under the root); ``no split`` (the benchmark or
    the user's release has no such split); ``unreadable`` (present, but this split could not be read:
    ``detail`` names the file looked for and what was found instead).
    """

    benchmark: str
    split: str
    status: str
    detail: str = ""
    items: list[RawItem] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        head = f"{self.benchmark}/{self.split}: {self.status}"
        if self.status != "ok":
            return f"{head}: {self.detail}"
        rec = scan_record(self.items)
        rejected = ", ".join(f"{k} {v}" for k, v in rec["rejected_by_reason"].items()) or "none"
        text = ", ".join(f"{k} {v}" for k, v in rec["text_quality"].items()) or "clean"
        return (f"{head} [{'; '.join(rec['shapes']) or 'no items'}] {rec['scanned']} items, media "
                f"{rec['media_found']} found / {rec['media_missing']} missing, rejected: {rejected}; "
                f"subtitles: {text} ({self.seconds:.2f} s)")


def inspect_root(layout: str, root: Path, benchmarks: list[str] | None = None) -> list[SplitScan]:
    """Scan every split of every benchmark (or of ``benchmarks``) under ``root`` without decoding anything.

    A benchmark counts as present when its folder is there (processed layout: ``<process_dir>/``) or,
    for the official layouts, when its label file for some split is found; any split of a present
    benchmark that cannot be read is ``unreadable``, never skipped.
    """
    from affectverse_ds.benchmarks import REGISTRY

    root = Path(root)
    scans: list[SplitScan] = []
    for name in benchmarks or sorted(REGISTRY):
        bench = get_benchmark(name)
        if layout not in bench.scanners:
            continue
        if layout == "unibench" and process_root_present(root, bench) is None:
            wanted = " or ".join(f"{d}/" for d in bench.process_dirs)
            scans.append(SplitScan(name, "*", "absent", f"no {wanted} under {root}"))
            continue
        rows: list[SplitScan] = []
        for split in split_names(bench):
            start = time.perf_counter()
            try:
                items = scan_split(bench, layout, root, split)
            except SplitAbsent as err:
                rows.append(SplitScan(name, split, "no split", str(err.args[0] if err.args else err)))
            except LayoutNotFound as err:
                rows.append(SplitScan(name, split, "not found", str(err)))
            except Exception as err:  # noqa: BLE001  (reported as unreadable, never skipped)
                rows.append(SplitScan(name, split, "unreadable", f"{type(err).__name__}: {err}"))
            else:
                rows.append(SplitScan(name, split, "ok", items=items, seconds=time.perf_counter() - start))
        present = layout == "unibench" or any(r.status in ("ok", "unreadable") for r in rows)
        if not present:  # official layout: no label file of any split
            scans.append(SplitScan(name, "*", "absent", "; ".join(dict.fromkeys(r.detail for r in rows))))
            continue
        for row in rows:
            if row.status == "not found":
                row.status = "unreadable"  # the benchmark is there, so a missing label file is a failure
        scans.extend(rows)
    return scans


def unreadable(scans: list[SplitScan]) -> list[SplitScan]:
    return [s for s in scans if s.status == "unreadable"]


def build_all(layout: str, root: Path, out: Path, scans: list[SplitScan] | None = None,
              **kwargs) -> list[BuildReport]:
    """Build every benchmark split that :func:`inspect_root` read under ``root`` (kwargs: :func:`build_split`).

    Splits the scan found ``unreadable`` are not built; the caller reports them and fails
    (:func:`unreadable`): a present benchmark never vanishes from the output silently.
    """
    scans = inspect_root(layout, Path(root)) if scans is None else scans
    reports = []
    for scan in scans:
        if scan.status == "ok" and scan.items:
            bench = get_benchmark(scan.benchmark)
            reports.append(build_split(bench, scan.split, scan.items, Path(root), Path(out), **kwargs))
    return reports
