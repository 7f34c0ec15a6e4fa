"""The shard contract: what one WebDataset sample holds.

Used by the writer (`data/shards.py`) and by the reader (`data/loader.py`,
`data_prep/verify_shards.py`) so the two can never drift apart.

A sample with key ``K`` is these tar members:

- ``K.json``            metadata (fields below), always present
- ``K.fNNN.jpg``        frame NNN (3-digit, 000..), 224x224 RGB JPEG, 3 FPS; none when video is missing
- ``K.flac``            16 kHz mono audio, lossless; absent when audio is missing
"""
from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import soundfile as sf
from PIL import Image

FPS = 3.0
FRAME_SIZE = 224
SAMPLE_RATE = 16000
AUDIO_EXT = "flac"
META_EXT = "json"
MAX_FRAMES = 999  # the 3-digit frame suffix bounds a sample to 999 frames (333 s at 3 FPS)
MAX_DURATION = MAX_FRAMES / FPS
MAX_AUDIO_SAMPLES = round(MAX_DURATION * SAMPLE_RATE) + SAMPLE_RATE  # one second of slack
MAX_META_BYTES = 1 << 20  # a subtitle and a chat: far below this
MAX_META_DEPTH = 8  # the deepest legitimate nesting is messages[i]["content"][j]["text"] (4)

# The most bytes a tar member may declare before it is read (data/tars.py checks the header's size): a FLAC of
# 16-bit mono holds at most 2 bytes a sample plus its frame headers; a 224 px JPEG at quality 90 is ~30 KB.
MAX_AUDIO_BYTES = 2 * MAX_AUDIO_SAMPLES + (1 << 20)
MAX_FRAME_BYTES = 1 << 20
MAX_OTHER_BYTES = 1 << 20  # a member outside the contract: read only to be reported

SHARD_PATTERN = "{benchmark}-{split}-{index:06d}.tar"
SIZES_FILE = "sizes.json"
MANIFEST_FILE = "manifest.parquet"


def frame_ext(i: int) -> str:
    """Tar member extension of frame ``i`` (``f000.jpg``)."""
    if not 0 <= i <= MAX_FRAMES:
        raise ValueError(f"frame index {i} outside 0..{MAX_FRAMES}")
    return f"f{i:03d}.jpg"


FRAME_EXT_RE = re.compile(r"^f(\d{3})\.jpg$")


def member_limit(ext: str) -> int:
    """The most bytes a member with extension ``ext`` may declare (in its tar header) before it is read."""
    if ext == META_EXT:
        return MAX_META_BYTES
    if ext == AUDIO_EXT:
        return MAX_AUDIO_BYTES
    return MAX_FRAME_BYTES if FRAME_EXT_RE.match(ext) else MAX_OTHER_BYTES


@dataclass(frozen=True)
class OversizeMember:
    """Stands for a tar member whose header declares more than :func:`member_limit` bytes: never read
    (a sparse member of a few KB on disk can declare gigabytes)."""

    size: int
    limit: int

# Required metadata fields and their JSON types. `label` holds the benchmark's
# label fields: `emo` (class string or null), `val` (float or null),
# `openset` (list of words or null).
META_FIELDS: dict[str, type | tuple[type, ...]] = {
    "benchmark": str,
    "split": str,
    "name": str,
    "label": dict,
    "duration": (int, float),
    "fps": (int, float),
    "n_frames": int,
    "audio_samples": int,
    "sample_rate": int,
    "modalities": dict,  # {"video": bool, "audio": bool, "text": bool}
    "subtitle": str,
    "question": str,
    "answer": str,
    "messages": list,  # structured chat (affectverse_ds.chat.build_messages)
    "text": str,  # rendered chat-template string
    "source": str,
    "source_sha256": str,
    "synthetic": bool,
}


def sample_key(benchmark: str, split: str, name: str) -> str:
    """WebDataset key of a sample. Dots would split the key, so they become '_'."""
    return f"{benchmark}__{split}__{name}".replace(".", "_")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counted without recursion and stopping past ``limit``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack += [(v, d + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_meta(meta: Any) -> list[str]:
    """Problems with one sample's metadata (any JSON value); an empty list means it follows the contract."""
    if not isinstance(meta, dict):
        return [f"metadata is a JSON {type(meta).__name__}, not an object"]
    if _depth(meta, MAX_META_DEPTH) > MAX_META_DEPTH:
        return [f"metadata nested deeper than {MAX_META_DEPTH} levels"]
    problems = []
    for field, typ in META_FIELDS.items():
        if field not in meta:
            problems.append(f"missing field {field!r}")
        elif not isinstance(meta[field], typ) or (typ is int and isinstance(meta[field], bool)):
            problems.append(f"field {field!r} has type {type(meta[field]).__name__}")
    if problems:
        return problems
    if set(meta["modalities"]) != {"video", "audio", "text"}:
        return ["modalities must name exactly video, audio, text"]
    if meta["modalities"]["video"] != (meta["n_frames"] > 0):
        problems.append("modalities.video disagrees with n_frames")
    if meta["modalities"]["audio"] != (meta["audio_samples"] > 0):
        problems.append("modalities.audio disagrees with audio_samples")
    if meta["sample_rate"] != SAMPLE_RATE:
        problems.append(f"sample_rate {meta['sample_rate']} != {SAMPLE_RATE}")
    if not set(meta["label"]) <= {"emo", "val", "openset"}:
        problems.append(f"unknown label fields {sorted(set(meta['label']) - {'emo', 'val', 'openset'})}")
    label = meta["label"]
    if label.get("emo") is not None and not isinstance(label["emo"], str):
        problems.append(f"label.emo has type {type(label['emo']).__name__}")
    if label.get("val") is not None and not _finite_number(label["val"]):
        problems.append(f"label.val {label['val']!r} is not a finite number")
    if label.get("openset") is not None and not (
            isinstance(label["openset"], list) and all(isinstance(w, str) for w in label["openset"])):
        problems.append("label.openset is not a list of words")
    if not all(isinstance(v, bool) for v in meta["modalities"].values()):
        problems.append("modalities values must be booleans")
    if not (_finite_number(meta["duration"]) and 0 <= meta["duration"] <= MAX_DURATION + 1):
        problems.append(f"duration {meta['duration']!r} outside 0..{MAX_DURATION:g} s")
    if not (_finite_number(meta["fps"]) and meta["fps"] > 0):
        problems.append(f"fps {meta['fps']!r} is not a positive number")
    if not 0 <= meta["n_frames"] <= MAX_FRAMES:
        problems.append(f"n_frames {meta['n_frames']} outside 0..{MAX_FRAMES}")
    if not 0 <= meta["audio_samples"] <= MAX_AUDIO_SAMPLES:
        problems.append(f"audio_samples {meta['audio_samples']} outside 0..{MAX_AUDIO_SAMPLES}")
    if not all(isinstance(m, dict) for m in meta["messages"]):
        problems.append("messages must be a list of objects")
    return problems


# ----------------------------------------------------------------------------- one sample's members


TIME_EPS = 1e-6  # float slack when comparing timestamps with the k / fps grid


# The stored clip's sizes, derived from its duration: here (not in media.py, which decodes with PyAV) so that
# checking a shard sample needs no video decoder and schema <-> media is one arrow, media -> schema.
def frame_count(duration: float, fps: float = FPS) -> int:
    """Number of sampled frames of a clip: the ``k`` with ``k / fps < duration``."""
    return max(0, math.ceil(duration * fps - TIME_EPS))


def audio_length(duration: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of audio samples stored for a clip of ``duration`` seconds."""
    return max(0, round(duration * sample_rate))

@dataclass
class CheckedSample:
    """A sample that passed :func:`check_sample`: its metadata, frame JPEGs in order and float32 audio (or None)."""

    meta: dict[str, Any]
    frames: list[bytes]
    audio: np.ndarray | None
    frames_unreadable: str | None = None  # lenient check only: why ``frames`` is empty though n_frames > 0


def _parse_meta(data: Any) -> tuple[Any, str | None]:
    if not isinstance(data, (bytes, bytearray)):
        return None, f".{META_EXT} member is {type(data).__name__}, not bytes"
    if len(data) > MAX_META_BYTES:
        return None, f".{META_EXT} member has {len(data)} bytes (limit {MAX_META_BYTES})"
    try:
        return json.loads(data), None
    except RecursionError:
        return None, f".{META_EXT} member nests too deeply"
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        return None, f".{META_EXT} member is not JSON: {type(err).__name__}: {err}"


def _check_frame(ext: str, data: bytes, strict: bool) -> tuple[tuple[int, int] | None, str | None]:
    """Size of one frame from its header, or the problem. The strict check (verify_shards) then decodes the
    pixels too, once the header has bounded them (a body cut short reads as a sound header); the lenient one
    leaves decoding to the encoder, which decodes only the frames it keeps."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a header claiming a huge image
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode, size = im.format, im.mode, im.size
                problem = _frame_problem(ext, fmt, mode, size, strict)
                if strict and problem is None:
                    im.load()  # at most FRAME_SIZE x FRAME_SIZE pixels: the header was checked first
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        return None, f"{ext} is not a readable image: {type(err).__name__}: {err}"
    return (None, problem) if problem else (size, None)


def _frame_problem(ext: str, fmt: str | None, mode: str, size: tuple[int, int], strict: bool) -> str | None:
    if fmt != "JPEG" or mode != "RGB":
        return f"{ext} is {fmt} {mode}, not an RGB JPEG"
    side = FRAME_SIZE if strict else None
    if size[0] != size[1] or (side is not None and size[0] != side) or not 1 <= size[0] <= FRAME_SIZE:
        return f"{ext} is {size[0]}x{size[1]}, expected a square of at most {FRAME_SIZE} px" + (
            f" (exactly {side})" if side else "")
    return None


def _check_audio(data: bytes, meta: dict, strict: bool) -> tuple[np.ndarray | None, list[str]]:
    """Audio from the FLAC member: the header is checked first, then only the declared frames are read."""
    n = meta["audio_samples"]
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        return None, [f".{AUDIO_EXT} is not readable audio: {err}"]
    problems = []
    if info.format != "FLAC" or info.samplerate != SAMPLE_RATE or info.channels != 1:
        problems.append(f".{AUDIO_EXT} is {info.format} at {info.samplerate} Hz with {info.channels} channels, "
                        f"expected mono FLAC at {SAMPLE_RATE} Hz")
    if info.frames != n:
        problems.append(f".{AUDIO_EXT} holds {info.frames} samples, audio_samples says {n}")
    if problems:
        return None, problems
    try:
        audio, _ = sf.read(io.BytesIO(data), frames=n, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
        return None, [f".{AUDIO_EXT} cannot be decoded: {err}"]
    if audio.shape != (n,):
        return None, [f".{AUDIO_EXT} decoded to {audio.shape}, expected ({n},)"]
    if strict and not np.isfinite(audio).all():
        return None, [f".{AUDIO_EXT} is not finite"]
    return audio, []


def check_sample(raw: Mapping[str, Any], *, strict: bool = False) -> tuple[list[str], CheckedSample | None]:
    """Check one sample as webdataset reads it (member extension -> bytes) against the shard contract.

    The single check shared by the training/evaluation loader and ``data_prep/verify_shards``. It never
    raises for any member content, reads image headers only (a header claiming a huge image is a problem,
    not an allocation) and reads audio only after its header agrees with the metadata, so memory stays
    bounded by the contract's limits (``MAX_FRAMES``, ``MAX_AUDIO_SAMPLES``).

    A frame whose header is unreadable (or not a square RGB JPEG of at most 224 px) is a problem in the
    strict form; in the lenient form the sample comes back without frames and with ``frames_unreadable``
    set, so settings without video still use its audio and text, and those with video skip it.

    Args:
        raw: the sample (``__key__``, ``__url__`` and the members by extension).
        strict: also check what the builder guarantees beyond readability (224 px frames, ``n_frames``
            and ``audio_samples`` derived from ``duration``); used by verify_shards.
    Returns:
        (problems, sample): one line per problem without the key, and the parsed sample when there is none.
    """
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    over = sorted(k for k, v in members.items() if isinstance(v, OversizeMember))
    if over:
        return [f"member .{k} declares {members[k].size} bytes, over the {members[k].limit}-byte limit (not read)"
                for k in over], None
    odd = sorted(k for k, v in members.items() if not isinstance(v, (bytes, bytearray)))
    if odd:
        return [f"member .{odd[0]} is {type(members[odd[0]]).__name__}, not bytes"], None
    if META_EXT not in members:
        return [f"no .{META_EXT} member"], None
    meta, problem = _parse_meta(members[META_EXT])
    if problem:
        return [problem], None
    problems = validate_meta(meta)
    if problems:
        return problems, None
    frames = sorted(k for k in members if FRAME_EXT_RE.match(k))
    unexpected = sorted(set(members) - set(frames) - {META_EXT, AUDIO_EXT})
    problems += [f"unexpected member .{k}" for k in unexpected]
    if frames != [frame_ext(i) for i in range(meta["n_frames"])]:
        problems.append(f"{len(frames)} frame members for n_frames={meta['n_frames']} (expected f000..)")
    if strict and meta["n_frames"] != frame_count(meta["duration"], meta["fps"]):
        problems.append(f"n_frames {meta['n_frames']} != ceil({meta['duration']} s x {meta['fps']} FPS)")
    if strict and meta["audio_samples"] not in (0, audio_length(meta["duration"])):
        problems.append(f"audio_samples {meta['audio_samples']} != duration x {SAMPLE_RATE}")
    frame_problems, sizes = [], set()
    for ext in frames:
        size, problem = _check_frame(ext, members[ext], strict)
        if problem:
            frame_problems.append(problem)
            break  # one bad frame says enough; the rest are not opened
        sizes.add(size)
    if len(sizes) > 1:
        frame_problems.append(f"frames differ in size: {sorted(sizes)}")
    if strict:
        problems += frame_problems
    audio = None
    if AUDIO_EXT in members and meta["audio_samples"] == 0:
        problems.append(f".{AUDIO_EXT} member but audio_samples is 0")
    elif meta["audio_samples"] > 0:
        if AUDIO_EXT not in members:
            problems.append(f"no .{AUDIO_EXT} member for audio_samples={meta['audio_samples']}")
        elif not problems:  # decode audio only for an otherwise sound sample
            audio, more = _check_audio(members[AUDIO_EXT], meta, strict)
            problems += more
    if problems:
        return problems, None
    if frame_problems:  # the video is unusable, the audio and text are not: settings without video still read it
        return [], CheckedSample(meta, [], audio, frames_unreadable="; ".join(frame_problems))
    return [], CheckedSample(meta, [members[e] for e in frames], audio)
