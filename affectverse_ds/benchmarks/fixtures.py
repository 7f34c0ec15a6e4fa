"""Write a small raw benchmark tree, in a real release's on-disk shape, with real encoded media.

Over 400 lines: every release shape the scanners read, sharing one set of item, clip and CSV writers.

    python -m data_prep.make_fixtures --benchmark meld --layout official --out /tmp/meld-fx \\
        [--labels tests/reference/merbench/meld-process/label.npz] [--n 4] [--seed 0] [--inject dup,nomedia] \\
        [--shape flat]

Shapes (docs/datasets.md): by default the tree has the shape the public release has
(``shape="real"``); :data:`OLDER_SHAPES` lists the other shapes that also occur in the wild:

- meld/official: ``train/train_sent_emo.csv`` (MELD.Raw); ``flat``: all three CSVs at the top (the
  declare-lab repository's ``data/MELD/``).
- mer2023/official: ``transcription.csv`` with ``name,sentence`` (MERTools' baseline); ``chinese``: ``name,chinese``.
- simsv2/official: ``meta.csv`` (thuiar/ch-sims-v2); ``label.csv``: MMSA's name.
- ovmerd/unibench: ``ovmerdplus-process/`` (MER-UniBench, AffectGPT's config.py); ``ovmerd-process``.
- mer2023/unibench test3: ``val`` is the -10 no-valence marker, as in the real label-6way.npz.

Media are made with PyAV: H.264/AAC .mp4 (MPEG-4 part 2 + PCM .avi for IEMOCAP), 160x120, 25 fps,
1-2 s, a left and a right half of different colours (IEMOCAP's two actors) and a moving bar, with a
sine tone. The processed layout also gets its 16 kHz wav folder. With ``--labels`` (a real label
file or its ``<dataset>-process`` folder) the first N entries of the split in file order give names,
labels and, when the folder has the transcript, subtitles; otherwise plausible ones are made up.

``--inject`` plants bad input, one kind per item (the first items; at least one item stays clean):

- rejected by the scanner: ``badlabel`` (unknown label), ``nan`` (NaN score), ``dup`` (a second
  entry with the same name), ``nomedia`` (no media file);
- kept with a subtitle note: ``nonutf8`` (invalid UTF-8 bytes in the subtitle), ``emptysub``;
- found by the media decoder: ``corrupt`` (random bytes), ``truncated`` (first 40 % of a good file),
  ``zerolen`` (a container with no frames), ``noaudio`` (no audio stream, no wav), ``short`` (0.4 s),
  ``rotated`` (90 degree display matrix), ``vfr`` (irregular frame times), ``oddsize`` (161x121).

Not every kind fits every benchmark (MELD has no score to make NaN, npz label dicts cannot repeat a
name): :func:`applicable_injections` lists the ones that do, and others are refused.
``fixture.json`` in ``--out`` records the benchmark, layout, split and which item got which kind.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from affectverse_ds.benchmarks import Benchmark, get_benchmark
from affectverse_ds.benchmarks import meld, mer2023
from affectverse_ds.benchmarks.clip_writer import AudioStream, VideoStream, mux_clip
from affectverse_ds.benchmarks._mmsa import LABEL_FILE as MMSA_LABEL_FILE, RAW_DIR as MMSA_RAW_DIR
from affectverse_ds.benchmarks.layouts import ProcessedLayout, items_from_table, read_transcript

LABEL_KINDS = ("badlabel", "nan", "dup", "nomedia")
SUBTITLE_KINDS = ("nonutf8", "emptysub")
MEDIA_KINDS = ("corrupt", "truncated", "zerolen", "noaudio", "short", "rotated", "vfr", "oddsize")
INJECT_KINDS = LABEL_KINDS + SUBTITLE_KINDS + MEDIA_KINDS

BENCHMARKS = ("mer2023", "mer2024", "meld", "iemocap", "cmumosi", "cmumosei", "sims", "simsv2", "ovmerd")
OFFICIAL = ("meld", "mer2023", "iemocap", "cmumosi", "cmumosei", "sims", "simsv2")
CHINESE = ("mer2023", "mer2024", "sims", "simsv2")
WIDTH, HEIGHT, FPS = 160, 120, 25
ODD_SIZE = (161, 121)
SHORT_SECONDS = 0.4
BAD_LABEL = "confused"  # not a class of any benchmark
FIXTURE_FILE = "fixture.json"
# (benchmark, layout) -> the older shapes make_fixture can also write ("real" is always the default).
OLDER_SHAPES = {
    ("meld", "official"): ("flat",),
    ("mer2023", "official"): ("chinese",),
    ("simsv2", "official"): ("label.csv",),
    ("ovmerd", "unibench"): ("ovmerd-process",),
}
# Label file of the processed layout, per benchmark (default label.npz).
LABEL_FILES = {
    "mer2023": "label-6way.npz", "mer2024": "label-6way.npz", "iemocap": "label_4way.npz", "ovmerd": "ovlabel.csv",
}


@dataclass
class FixtureItem:
    """One annotated item to write. ``val`` may be a str or NaN when a bad score is planted."""

    name: str
    emo: str | None = None
    val: object = None
    openset: tuple[str, ...] | None = None
    subtitle: str = ""
    duration: float = 1.2
    colour: int = 0
    inject: str | None = None


# ----------------------------------------------------------------------------- which kinds apply

def has_score(bench: Benchmark) -> bool:
    return bench.group == "sentiment" or bench.name in ("mer2023", "mer2024")


def applicable_injections(benchmark: str, layout: str) -> tuple[str, ...]:
    """The inject kinds that make sense for this benchmark and layout.

    ``nan`` needs a score field (MELD, IEMOCAP and OV-MERD+ have none); ``dup`` needs a label file
    that can repeat a name (npz dicts cannot); ``rotated`` and ``vfr`` need a container that stores
    a display matrix and per-frame times (not AVI, IEMOCAP's format).
    """
    bench = get_benchmark(benchmark)
    csv_labels = layout == "official" or bench.name == "ovmerd"
    avi = bench.name == "iemocap"
    return tuple(k for k in INJECT_KINDS if not (
        (k == "nan" and not has_score(bench)) or (k == "dup" and not csv_labels) or (k in ("rotated", "vfr") and avi)
    ))


# ----------------------------------------------------------------------------- items

def _youtube_id(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    return "".join(rng.choice(alphabet) for _ in range(11))


def _synthetic_name(bench: Benchmark, split: str, i: int, rng: random.Random) -> str:
    """Names shaped like the benchmark's real ones (so the official layouts can be derived from them)."""
    if bench.name in ("mer2023", "mer2024"):
        return f"sample_{rng.randrange(10 ** 8):08d}"
    if bench.name == "meld":
        return f"{split}_dia{i // 2}_utt{i % 2}"
    if bench.name == "iemocap":
        session = 5 if split == "test" else 1
        return f"Ses0{session}F_impro0{i // 4 + 1}_{'FM'[i % 2]}{i % 4 // 2:03d}"
    if bench.name in ("cmumosi", "cmumosei"):
        return f"{_youtube_id(rng)}_{rng.randrange(1, 40)}"
    if bench.name in ("sims", "simsv2"):
        return f"video_{i // 3 + 1:04d}_{i % 3 + 1:04d}"
    return f"sample_{i:08d}"


def _synthetic_label(bench: Benchmark, i: int, rng: random.Random) -> dict:
    if bench.group == "openset":
        words = ("happy", "relaxed", "worried", "angry", "surprised", "sad")
        return {"openset": tuple(rng.sample(words, 2))}
    if bench.group == "sentiment":
        bound = 3.0 if bench.name.startswith("cmu") else 1.0
        return {"val": round(rng.uniform(-bound, bound), 1) + 0.0}  # + 0.0: no -0.0
    label = {"emo": bench.classes[i % len(bench.classes)]}
    if has_score(bench):
        label["val"] = round(rng.uniform(-2.5, 2.5) * 4) / 4
    return label


def _synthetic_subtitle(bench: Benchmark, i: int) -> str:
    if bench.name in CHINESE:
        return ("我今天真的很开心。", "你怎么又迟到了？", "这件事情我不想再说了。", "好吧，就这样吧。")[i % 4]
    return ("I can't believe you did that.", "Well, that was fun.", "Okay, let's go.", "Why would you say that?")[i % 4]


def synthetic_items(bench: Benchmark, split: str, n: int, rng: random.Random) -> list[FixtureItem]:
    items, names = [], set()
    for i in range(n * 4):
        name = _synthetic_name(bench, split, i, rng)
        if name in names:
            continue
        names.add(name)
        items.append(FixtureItem(name=name, subtitle=_synthetic_subtitle(bench, i), **_synthetic_label(bench, i, rng)))
        if bench.name == "mer2023" and split == "test3":
            items[-1].val = mer2023.NO_VALENCE  # test3 has no valence: the real labels hold the -10 marker
        if len(items) == n:
            break
    return items


def real_items(bench: Benchmark, labels: Path, split: str, n: int) -> list[FixtureItem]:
    """The first ``n`` usable entries of ``split`` in a real label file (or its process folder)."""
    expected = LABEL_FILES.get(bench.name, "label.npz")
    if labels.is_file() and labels.name != expected:
        raise ValueError(f"{bench.name} labels are read from {expected}, not {labels.name} (or pass the folder)")
    proc = labels if labels.is_dir() else labels.parent
    entries = [e for e in items_from_table(bench.load_labels(proc, split), split) if e.label is not None][:n]
    layout: ProcessedLayout = bench.extra["layout"]
    transcript = proc / layout.transcript
    subtitles = read_transcript(transcript, layout.text_column) if transcript.is_file() else {}
    return [
        FixtureItem(name=e.name, emo=e.label.emo, val=e.label.val, openset=e.label.openset,
                    subtitle=subtitles.get(e.name) or _synthetic_subtitle(bench, i))
        for i, e in enumerate(entries)
    ]


def plant(items: list[FixtureItem], bench: Benchmark, kinds: tuple[str, ...]) -> list[FixtureItem]:
    """Apply one inject kind per item (items[0] gets kinds[0] ...); ``dup`` adds a second entry."""
    out = list(items)
    for item, kind in zip(items, kinds):
        item.inject = kind
        if kind == "badlabel":
            item.emo, item.val, item.openset = (
                (BAD_LABEL, item.val, None) if bench.group == "discrete"
                else (None, BAD_LABEL, None) if bench.group == "sentiment" else (None, None, ())
            )
        elif kind == "nan":
            item.val = float("nan")
        elif kind == "emptysub":
            item.subtitle = ""
        elif kind == "short":
            item.duration = SHORT_SECONDS
        elif kind == "dup":
            twin = dataclasses.replace(item, subtitle=item.subtitle + " (repeated)", inject="dup")
            item.inject = None  # the first entry is the good one
            out.insert(out.index(item) + 1, twin)
    return out


# ----------------------------------------------------------------------------- media

def _frame(w: int, h: int, colour: int, i: int) -> np.ndarray:
    left, right = (40 + 50 * colour) % 256, (220 - 40 * colour) % 256
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2] = (left, 60, 160)
    img[:, w // 2:] = (160, right, 60)
    img[:, (i * 4) % w] = 255  # a moving bar, so consecutive frames differ
    return img


def _tone(seconds: float, rate: int, colour: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * colour) * t)).astype(np.float32)


def _video_stream(avi: bool, size: tuple[int, int], vfr: bool, rotated: bool) -> VideoStream:
    return VideoStream(
        "mpeg4" if avi else "libx264", FPS, size,
        # H.264 4:2:0 needs even sizes; 4:4:4 carries the odd-sized case.
        pix_fmt="yuv444p" if size[0] % 2 and not avi else "yuv420p",
        options={} if avi else {"preset": "ultrafast"},
        threads=1,  # one thread: identical bytes on every run
        time_base=Fraction(1, 1000) if vfr else Fraction(1, FPS), rotation=90 if rotated else None)


def _audio_stream(avi: bool) -> AudioStream:
    # AVI gets PCM: with MP3 the AVI demuxer mistimes the second video frame, a quirk of the
    # fixture's muxing, not a bad input we mean to plant.
    return AudioStream("pcm_s16le" if avi else "aac", 44100)


def _video_frames(stream: VideoStream, n_frames: int, colour: int, vfr: bool):
    pts = 0
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(_frame(*stream.size, colour, i), format="rgb24")
        frame.pts, frame.time_base = pts, stream.time_base
        pts += (20, 40, 60)[i % 3] if vfr else 1  # vfr: frames 20/40/60 ms apart
        yield frame


def _audio_frames(stream: AudioStream, seconds: float, colour: int):
    samples = _tone(seconds, 44100, colour)
    pcm = stream.codec.startswith("pcm")
    if pcm:
        samples = (samples * 32767).astype(np.int16)
    step = 1024  # AAC's frame size; PCM takes any
    for start in range(0, len(samples), step):
        chunk = samples[None, start:start + step].copy()
        frame = av.AudioFrame.from_ndarray(chunk, format="s16" if pcm else "flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 44100, start, Fraction(1, 44100)
        yield frame


def encode_clip(
    path: Path, seconds: float, colour: int, fault: str | None = None, rng: random.Random | None = None,
) -> None:
    """Encode one clip (``.avi``: MPEG-4 part 2 + PCM, else H.264 + AAC), optionally with a media fault."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fault == "corrupt":
        path.write_bytes(bytes((rng or random.Random(0)).randrange(256) for _ in range(4096)))
        return
    avi = path.suffix == ".avi"
    size = ODD_SIZE if fault == "oddsize" else (WIDTH, HEIGHT)
    n_frames = 0 if fault == "zerolen" else int(round(seconds * FPS))
    video = _video_stream(avi, size, fault == "vfr", fault == "rotated")
    audio = None if fault in ("noaudio", "zerolen") else _audio_stream(avi)
    mux_clip(path, video, _video_frames(video, n_frames, colour, fault == "vfr"), audio,
             _audio_frames(audio, seconds, colour) if audio is not None else (),
             header_first=True)  # a zero-frame file still gets its header
    if fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.4)])


def write_wav(path: Path, seconds: float, colour: int) -> None:
    """The processed layout's 16 kHz mono wav."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _tone(seconds, 16000, colour), 16000, subtype="PCM_16")


def _media_fault(item: FixtureItem) -> str | None:
    return item.inject if item.inject in MEDIA_KINDS else None


# ----------------------------------------------------------------------------- text files

def _bad_bytes(text: str, chinese: bool) -> bytes:
    """``text`` in a legacy encoding (GBK for Chinese, cp1252 for English): invalid as UTF-8."""
    # The fixed prefix makes sure the bytes are invalid UTF-8 even when ``text`` is plain ASCII.
    if chinese:
        return f"错误 {text}".encode("gbk", errors="replace")
    return f"Caf\u00e9 {text}".encode("cp1252", errors="replace")


def csv_bytes(header: list[str], rows: list[list[object]]) -> bytes:
    """A UTF-8 CSV; a ``bytes`` cell is written raw (how a non-UTF-8 subtitle gets into a file)."""
    buffer, raw = io.StringIO(), {}
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, bytes):
                token = f"@@RAW{len(raw)}@@"
                raw[token.encode()] = b'"' + cell.replace(b'"', b'""') + b'"'  # quoted: it may hold commas
                cell = token
            cells.append("" if cell is None else str(cell))
        writer.writerow(cells)
    data = buffer.getvalue().encode("utf-8")
    for token, cell in raw.items():
        data = data.replace(token, cell)
    return data


def _subtitle_cell(item: FixtureItem, chinese: bool) -> str | bytes:
    return _bad_bytes(item.subtitle, chinese) if item.inject == "nonutf8" else item.subtitle


def _first_of_each(items: list[FixtureItem]) -> list[FixtureItem]:
    """Items whose media to write: a duplicate entry shares its first entry's file."""
    seen, out = set(), []
    for item in items:
        if item.name not in seen:
            seen.add(item.name)
            out.append(item)
    return out


# ----------------------------------------------------------------------------- processed layout

def _npz_entry(bench: Benchmark, item: FixtureItem) -> dict:
    """One entry as MER-UniBench stores it: MELD/IEMOCAP keep class indices, the rest class strings or scores."""
    if bench.group == "sentiment":
        return {"emo": 0, "val": item.val}
    if bench.name in ("meld", "iemocap"):
        emo = bench.classes.index(item.emo) if item.emo in bench.classes else item.emo
        return {"emo": emo, "val": -10}
    return {"emo": item.emo, "val": item.val}


def _write_npz_labels(proc: Path, bench: Benchmark, split: str, items: list[FixtureItem]) -> None:
    label_file = LABEL_FILES.get(bench.name, "label.npz")
    corpus = {item.name: _npz_entry(bench, item) for item in items}
    if bench.name == "iemocap":
        members = {"whole_corpus": corpus}  # the split is the session digit in the name
    else:
        members = {f"{s}_corpus": {} for s in (bench.test_split, *bench.train_splits)}
        members[f"{split}_corpus"] = corpus
    # Pickled dicts inside .npz, as MER-UniBench writes them; reading goes through safe_pickle.
    np.savez(proc / label_file, **{k: np.array(v, dtype=object) for k, v in members.items()})


def _write_ovlabels(proc: Path, items: list[FixtureItem]) -> None:
    rows = [[item.name, "[" + ", ".join(item.openset or ()) + "]"] for item in items]
    (proc / LABEL_FILES["ovmerd"]).write_bytes(csv_bytes(["name", "openset"], rows))


def _write_transcript(proc: Path, bench: Benchmark, layout: ProcessedLayout, items: list[FixtureItem]) -> None:
    chinese = layout.text_column == "chinese"
    if layout.transcript == "subtitle_eng.csv":
        header, rows = ["name", "sentence"], [[i.name, _subtitle_cell(i, False)] for i in items]
    elif layout.transcript == "transcription_merge.csv":
        header, rows = ["name", "chinese"], [[i.name, _subtitle_cell(i, True)] for i in items]
    else:
        # The column the benchmark does not use holds a marker, so a test can see the right one was read.
        header = ["name", "chinese", "english"]
        rows = [[i.name, _subtitle_cell(i, True), f"(unused english) {i.name}"] if chinese
                else [i.name, f"(unused chinese) {i.name}", _subtitle_cell(i, False)] for i in items]
    (proc / layout.transcript).write_bytes(csv_bytes(header, rows))


def write_unibench(root: Path, bench: Benchmark, split: str, items: list[FixtureItem], audio_dir: bool, rng,
                   shape: str = "real") -> None:
    layout: ProcessedLayout = bench.extra["layout"]
    proc = root / (bench.process_dirs[0] if shape == "real" else shape)
    proc.mkdir(parents=True, exist_ok=True)
    for item in _first_of_each(items):
        if item.inject == "nomedia":
            continue
        encode_clip(proc / layout.video_dirs[0] / f"{item.name}{layout.video_exts[0]}",
                    item.duration, item.colour, _media_fault(item), rng)
        if audio_dir and item.inject not in ("noaudio", "zerolen"):
            write_wav(proc / layout.audio_dirs[0] / f"{item.name}.wav", item.duration, item.colour)
    if bench.name == "ovmerd":
        _write_ovlabels(proc, items)
    else:
        _write_npz_labels(proc, bench, split, [i for i in items if i.inject != "dup"])
    _write_transcript(proc, bench, layout, items)


# ----------------------------------------------------------------------------- official layouts

def _sentiment_word(val: object) -> str:
    try:
        score = float(val)
    except (TypeError, ValueError):
        return "Neutral"
    return "Positive" if score > 0 else "Negative" if score < 0 else "Neutral"


def _srt_time(seconds: float) -> str:
    """MELD's time stamps: ``00:14:38,127``."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_meld(root: Path, split: str, items: list[FixtureItem], rng, shape: str = "real") -> None:
    csv_names, clip_dirs = meld.OFFICIAL[split]
    # MELD.Raw: train/train_sent_emo.csv, dev and test CSVs at the top; "flat": all at the top
    csv_name = {"train": "train/train_sent_emo.csv"}.get(split, f"{'dev' if split == 'val' else split}_sent_emo.csv")
    if shape == "flat":
        csv_name = Path(csv_name).name
    clip_dirs = tuple(d for d in clip_dirs if "/" not in d) or clip_dirs  # as the tarballs unpack
    polarity = {"joy": "positive", "surprise": "positive", "neutral": "neutral"}
    rows = []
    for k, item in enumerate(items):
        dia, utt = item.name.split("_dia", 1)[1].split("_utt")
        start = 10.0 + 3 * k
        rows.append([k + 1, _subtitle_cell(item, False), "Ross", item.emo, polarity.get(item.emo, "negative"),
                     dia, utt, 3, 7, _srt_time(start), _srt_time(start + item.duration)])
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
              "Season", "Episode", "StartTime", "EndTime"]
    (root / csv_name).parent.mkdir(parents=True, exist_ok=True)
    (root / csv_name).write_bytes(csv_bytes(header, rows))
    for item in _first_of_each(items):
        if item.inject != "nomedia":
            clip = item.name.split("_", 1)[1]  # test_dia0_utt0 -> dia0_utt0
            encode_clip(root / clip_dirs[0] / f"{clip}.mp4", item.duration, item.colour, _media_fault(item), rng)


def write_mer2023(root: Path, split: str, items: list[FixtureItem], rng, shape: str = "real") -> None:
    root.mkdir(parents=True, exist_ok=True)
    rows = [[i.name, i.emo, "" if i.val is None else i.val] for i in items]
    (root / f"{split}-label.csv").write_bytes(csv_bytes(["name", "discrete", "valence"], rows))
    rows = [[i.name, _subtitle_cell(i, True)] for i in _first_of_each(items)]
    column = "chinese" if shape == "chinese" else "sentence"  # MERTools' baseline writes name,sentence
    (root / mer2023.OFFICIAL_TRANSCRIPT).write_bytes(csv_bytes(["name", column], rows))
    for item in _first_of_each(items):
        if item.inject != "nomedia":
            encode_clip(root / split / f"{item.name}.mp4", item.duration, item.colour, _media_fault(item), rng)


def write_mmsa(root: Path, bench: Benchmark, split: str, items: list[FixtureItem], rng, shape: str = "real") -> None:
    mode = {"train": "train", "val": "valid", "test": "test"}[split]
    rows = []
    for item in items:
        video_id, clip_id = item.name.rsplit("_", 1)
        rows.append([video_id, clip_id, _subtitle_cell(item, bench.name in CHINESE), item.val, item.val, item.val,
                     item.val, _sentiment_word(item.val), mode])
    header = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
    root.mkdir(parents=True, exist_ok=True)
    label_file = "meta.csv" if bench.name == "simsv2" and shape == "real" else MMSA_LABEL_FILE
    (root / label_file).write_bytes(csv_bytes(header, rows))
    for item in _first_of_each(items):
        if item.inject != "nomedia":
            video_id, clip_id = item.name.rsplit("_", 1)
            encode_clip(root / MMSA_RAW_DIR / video_id / f"{clip_id}.mp4", item.duration, item.colour,
                        _media_fault(item), rng)


def _iemocap_dialogs(items: list[FixtureItem]) -> dict[str, list[FixtureItem]]:
    """Group turns by dialog; a turn with a media fault or no media gets a dialog of its own, renamed,
    so the fault touches only that turn."""
    dialogs: dict[str, list[FixtureItem]] = {}
    for k, item in enumerate(items):
        if item.inject in MEDIA_KINDS + ("nomedia",) and item.inject != "short":
            prefix, speaker = item.name[:6], item.name.rsplit("_", 1)[1][0]
            item.name = f"{prefix}_fixture{k:02d}_{speaker}000"
        dialogs.setdefault(item.name.rsplit("_", 1)[0], []).append(item)
    return dialogs


def _iemocap_categories(items: list[FixtureItem]) -> dict[str, str]:
    """EmoEvaluation category per turn; happy turns alternate ``hap`` / ``exc`` so the merge is exercised."""
    categories, happy = {}, 0
    for item in items:
        if item.emo == "happy":
            categories.setdefault(item.name, ("hap", "exc")[happy % 2])
            happy += 1
        else:  # "zzz": an unknown category, for a planted bad label
            categories.setdefault(item.name, {"sad": "sad", "neutral": "neu", "anger": "ang"}.get(item.emo, "zzz"))
    return categories


def _write_iemocap_dialog(
    dialog_dir: Path, dialog: str, turns: list[FixtureItem], categories: dict[str, str], rng,
) -> None:
    """One dialog: its EmoEvaluation and transcription files and its two-actor video, turns back to back."""
    evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    transcript: list[bytes] = []
    t, timed = 0.3, {}
    for item in turns:
        if item.name not in timed:
            timed[item.name] = (t, t + item.duration)
            t += item.duration + 0.2
        start, end = timed[item.name]
        evaluation += [f"[{start:.4f} - {end:.4f}]\t{item.name}\t{categories[item.name]}\t[2.5000, 2.5000, 2.5000]",
                       "C-E1:\tNeutral;\t()", ""]
        if item.inject != "dup":
            text = _bad_bytes(item.subtitle, False) if item.inject == "nonutf8" else item.subtitle.encode()
            transcript.append(f"{item.name} [{start:08.4f}-{end:08.4f}]: ".encode() + text)
    for sub in ("EmoEvaluation", "transcriptions", "avi/DivX"):
        (dialog_dir / sub).mkdir(parents=True, exist_ok=True)
    (dialog_dir / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(evaluation) + "\n", encoding="utf-8")
    (dialog_dir / "transcriptions" / f"{dialog}.txt").write_bytes(b"\n".join(transcript) + b"\n")
    faults = {_media_fault(item) for item in turns} - {None, "short"}
    if not any(item.inject == "nomedia" for item in turns):
        fault = next(iter(faults), None)
        encode_clip(dialog_dir / "avi" / "DivX" / f"{dialog}.avi", t + 0.1, turns[0].colour, fault, rng)


def write_iemocap(root: Path, items: list[FixtureItem], rng) -> None:
    dialogs = _iemocap_dialogs(items)
    categories = _iemocap_categories(items)
    for dialog, turns in dialogs.items():
        _write_iemocap_dialog(root / f"Session{int(dialog[3:5])}" / "dialog", dialog, turns, categories, rng)


def write_official(root: Path, bench: Benchmark, split: str, items: list[FixtureItem], rng,
                   shape: str = "real") -> None:
    if bench.name == "meld":
        write_meld(root, split, items, rng, shape)
    elif bench.name == "mer2023":
        write_mer2023(root, split, items, rng, shape)
    elif bench.name == "iemocap":
        write_iemocap(root, items, rng)
    else:
        write_mmsa(root, bench, split, items, rng, shape)


# ----------------------------------------------------------------------------- entry point

def make_fixture(
    benchmark: str,
    layout: str,
    out: str | Path,
    n: int = 4,
    labels: str | Path | None = None,
    inject: tuple[str, ...] | list[str] = (),
    seed: int = 0,
    *,
    split: str | None = None,
    audio_dir: bool = True,
    shape: str = "real",
) -> Path:
    """Write a fixture tree and return the root to hand to the benchmark's scanner for ``layout``.

    Args:
        benchmark: registry name.
        layout: ``unibench`` or ``official``.
        out: output folder (created); it is also the returned root.
        n: number of annotated items (raised to ``len(inject) + 1`` so one item stays clean).
        labels: a real label file (or its ``<dataset>-process`` folder) to take names/labels from.
        inject: bad-input kinds to plant, one per item (see the module docstring).
        seed: seeds names, scores, durations and corrupt bytes.
        split: split to populate (default the benchmark's test split).
        audio_dir: processed layout only: also write the 16 kHz wav folder.
        shape: ``real`` (the public release's shape) or one of ``OLDER_SHAPES[(benchmark, layout)]``.
    """
    bench = get_benchmark(benchmark)
    if bench.name not in BENCHMARKS:
        raise ValueError(f"fixtures are for the nine real benchmarks ({', '.join(BENCHMARKS)}), not {benchmark}")
    if layout not in ("unibench", "official") or (layout == "official" and bench.name not in OFFICIAL):
        raise ValueError(f"no {layout!r} layout for {benchmark} (official layouts: {', '.join(OFFICIAL)})")
    if shape != "real" and shape not in OLDER_SHAPES.get((benchmark, layout), ()):
        raise ValueError(f"no shape {shape!r} for {benchmark}/{layout}; "
                         f"known: real, {', '.join(OLDER_SHAPES.get((benchmark, layout), ())) or '(no other)'}")
    inject = tuple(inject)
    unusable = [k for k in inject if k not in applicable_injections(benchmark, layout)]
    if unusable:
        raise ValueError(f"inject {unusable} does not apply to {benchmark}/{layout}; "
                         f"applicable: {', '.join(applicable_injections(benchmark, layout))}")
    split = split or bench.test_split
    rng = random.Random(seed)
    count = max(n, len(inject) + 1)
    items = real_items(bench, Path(labels), split, count) if labels else synthetic_items(bench, split, count, rng)
    for k, item in enumerate(items):
        item.duration, item.colour = round(rng.uniform(1.0, 2.0), 2), k % 5
    items = plant(items, bench, inject)
    root = Path(out)
    if layout == "unibench":
        write_unibench(root, bench, split, items, audio_dir, rng, shape)
    else:
        write_official(root, bench, split, items, rng, shape)
    record = {"benchmark": benchmark, "layout": layout, "split": split, "seed": seed, "shape": shape,
              "items": [{"name": i.name, "inject": i.inject} for i in items]}
    (root / FIXTURE_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--layout", required=True, choices=("unibench", "official"))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--labels", type=Path, help="real label file or <dataset>-process folder")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", help="split to populate (default: the benchmark's test split)")
    parser.add_argument("--inject", default="", help=f"comma list of: {','.join(INJECT_KINDS)}")
    parser.add_argument("--shape", default="real", help="real (default) or an older shape: "
                        + "; ".join(f"{b}/{l}: {', '.join(v)}" for (b, l), v in OLDER_SHAPES.items()))
    parser.add_argument("--no-audio-dir", action="store_true", help="unibench: no wav folder (audio from the video)")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.inject.split(",") if k)
    root = make_fixture(args.benchmark, args.layout, args.out, n=args.n, labels=args.labels, inject=kinds,
                        seed=args.seed, split=args.split, audio_dir=not args.no_audio_dir, shape=args.shape)
    print(root)


if __name__ == "__main__":
    main()
