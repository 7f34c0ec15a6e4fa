"""The shard contract: what one WebDataset sample holds.

Used by the writer (`data/shards.py`) and by the reader (`data/loader.py`,
`data_prep/verify_shards.py`) so the two can never drift apart.

A sample with key ``K`` is these tar members:

- ``K.json``            metadata (fields below), always present
- ``K.fNNN.jpg``        frame NNN (3-digit, 000..), 224x224 RGB JPEG, 3 FPS; none when video is missing
- ``K.flac``            16 kHz mono audio, lossless; absent when audio is missing
"""
from __future__ import annotations

import re
from typing import Any

FPS = 3.0
FRAME_SIZE = 224
SAMPLE_RATE = 16000
AUDIO_EXT = "flac"
META_EXT = "json"
MAX_FRAMES = 999  # the 3-digit frame suffix bounds a sample to 999 frames (333 s at 3 FPS)

SHARD_PATTERN = "{benchmark}-{split}-{index:06d}.tar"
SIZES_FILE = "sizes.json"
MANIFEST_FILE = "manifest.parquet"


def frame_ext(i: int) -> str:
    """Tar member extension of frame ``i`` (``f000.jpg``)."""
    if not 0 <= i <= MAX_FRAMES:
        raise ValueError(f"frame index {i} outside 0..{MAX_FRAMES}")
    return f"f{i:03d}.jpg"


FRAME_EXT_RE = re.compile(r"^f(\d{3})\.jpg$")

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


def validate_meta(meta: dict[str, Any]) -> list[str]:
    """Problems with one sample's metadata; an empty list means it follows the contract."""
    problems = []
    for field, typ in META_FIELDS.items():
        if field not in meta:
            problems.append(f"missing field {field!r}")
        elif not isinstance(meta[field], typ) or (typ is int and isinstance(meta[field], bool)):
            problems.append(f"field {field!r} has type {type(meta[field]).__name__}")
    if problems:
        return problems
    if set(meta["modalities"]) != {"video", "audio", "text"}:
        problems.append("modalities must name exactly video, audio, text")
    if meta["modalities"]["video"] != (meta["n_frames"] > 0):
        problems.append("modalities.video disagrees with n_frames")
    if meta["modalities"]["audio"] != (meta["audio_samples"] > 0):
        problems.append("modalities.audio disagrees with audio_samples")
    if meta["sample_rate"] != SAMPLE_RATE:
        problems.append(f"sample_rate {meta['sample_rate']} != {SAMPLE_RATE}")
    if not set(meta["label"]) <= {"emo", "val", "openset"}:
        problems.append(f"unknown label fields {sorted(set(meta['label']) - {'emo', 'val', 'openset'})}")
    return problems
