"""Check a shard folder against the shard contract, sizes.json and manifest.parquet.

    python -m data_prep.verify_shards SHARDS

Reads every sample with plain ``webdataset`` (as a loader would) and prints one line
per problem; exits 1 when there is any.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import webdataset as wds
from PIL import Image

from affectverse_ds.data import schema
from affectverse_ds.data.media import audio_length, frame_count


def check_sample(sample: dict) -> list[str]:
    """Problems of one sample as read by webdataset (raw bytes per extension)."""
    key = sample["__key__"]
    if schema.META_EXT not in sample:
        return [f"{key}: no .{schema.META_EXT} member"]
    meta = json.loads(sample[schema.META_EXT])
    problems = [f"{key}: {p}" for p in schema.validate_meta(meta)]
    if problems:
        return problems
    frames = sorted(k for k in sample if schema.FRAME_EXT_RE.match(k))
    if [schema.frame_ext(i) for i in range(len(frames))] != frames:
        problems.append(f"{key}: frame members are not f000..f{len(frames) - 1:03d}")
    if len(frames) != meta["n_frames"]:
        problems.append(f"{key}: {len(frames)} frames, meta says {meta['n_frames']}")
    if meta["n_frames"] != frame_count(meta["duration"], meta["fps"]):
        problems.append(f"{key}: n_frames {meta['n_frames']} != ceil({meta['duration']} s x {meta['fps']} FPS)")
    for ext in frames:
        size = Image.open(io.BytesIO(sample[ext])).size
        if size != (schema.FRAME_SIZE, schema.FRAME_SIZE):
            problems.append(f"{key}: {ext} is {size[0]}x{size[1]}")
            break
    problems += _check_audio(key, sample, meta)
    return problems


def _check_audio(key: str, sample: dict, meta: dict) -> list[str]:
    if schema.AUDIO_EXT not in sample:
        return [f"{key}: meta has audio but no .{schema.AUDIO_EXT}"] if meta["modalities"]["audio"] else []
    pcm, rate = sf.read(io.BytesIO(sample[schema.AUDIO_EXT]), dtype="int16", always_2d=True)
    problems = []
    if rate != schema.SAMPLE_RATE or pcm.shape[1] != 1:
        problems.append(f"{key}: audio is {rate} Hz with {pcm.shape[1]} channels")
    if pcm.shape[0] != meta["audio_samples"]:
        problems.append(f"{key}: audio has {pcm.shape[0]} samples, meta says {meta['audio_samples']}")
    if meta["audio_samples"] != audio_length(meta["duration"], rate):
        problems.append(f"{key}: audio_samples {meta['audio_samples']} != duration x {rate}")
    if not np.isfinite(pcm).all():
        problems.append(f"{key}: audio not finite")
    return problems


def verify_dir(folder: Path) -> list[str]:
    """Every problem found in a shard folder; an empty list means it is sound.

    Args:
        folder: output folder of ``data_prep.build_shards``.

    Returns:
        One line per problem.
    """
    folder = Path(folder)
    problems = [f"unfinished shard {p.name}" for p in sorted(folder.glob("*.tar.tmp"))]
    for name in (schema.SIZES_FILE, schema.MANIFEST_FILE):
        if not (folder / name).exists():
            problems.append(f"missing {name}")
    if problems and not (folder / schema.SIZES_FILE).exists():
        return problems
    sizes = json.loads((folder / schema.SIZES_FILE).read_text())
    on_disk = sorted(p.name for p in folder.glob("*.tar"))
    problems += [f"shard {n} not in {schema.SIZES_FILE}" for n in on_disk if n not in sizes]
    problems += [f"{schema.SIZES_FILE} lists missing shard {n}" for n in sizes if n not in on_disk]
    counts, keys = Counter(), Counter()
    urls = [str(folder / n) for n in sorted(sizes) if n in on_disk]
    if urls:
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            counts[Path(sample["__url__"]).name] += 1
            keys[sample["__key__"]] += 1
            problems += check_sample(sample)
    problems += [f"{n}: {counts[n]} samples, {schema.SIZES_FILE} says {sizes[n]}"
                 for n in sizes if n in on_disk and counts[n] != sizes[n]]
    problems += [f"key {k} appears {c} times" for k, c in keys.items() if c > 1]
    if (folder / schema.MANIFEST_FILE).exists():
        problems += _check_manifest(folder / schema.MANIFEST_FILE, counts, set(keys))
    return problems


def _check_manifest(path: Path, counts: Counter, keys: set[str]) -> list[str]:
    rows = pq.read_table(path).to_pylist()
    problems = [f"manifest: {r['key']} has status {r['status']!r}" for r in rows
                if r["status"] not in ("accepted", "rejected")]
    problems += [f"manifest: rejected {r['key']} has no reason" for r in rows
                 if r["status"] == "rejected" and not r["reason"]]
    accepted = [r for r in rows if r["status"] == "accepted"]
    per_shard = Counter(r["shard"] for r in accepted)
    problems += [f"manifest: {n} accepted rows for {s}, shard holds {counts[s]}"
                 for s, n in per_shard.items() if counts[s] != n]
    problems += [f"manifest: shard {s} has no accepted rows" for s in counts if s not in per_shard]
    listed = {r["key"] for r in accepted}
    problems += [f"manifest: accepted {k} not in any shard" for k in sorted(listed - keys)]
    problems += [f"manifest: sample {k} has no accepted row" for k in sorted(keys - listed)]
    # a repeated name is legitimately several rows (one accepted at most, the others rejected as duplicates)
    dup = Counter(r["key"] for r in accepted)
    problems += [f"manifest: key {k} accepted {c} times" for k, c in dup.items() if c > 1]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    args = p.parse_args(argv)
    problems = verify_dir(args.folder)
    for line in problems:
        print(line)
    if not problems:
        sizes = json.loads((args.folder / schema.SIZES_FILE).read_text())
        print(f"ok: {sum(sizes.values())} samples in {len(sizes)} shards")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
