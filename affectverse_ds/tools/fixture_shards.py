"""Fixture shards written with webdataset's TarWriter, following ``affectverse_ds/data/schema.py`` exactly.

:func:`write_test_shards` makes valid samples (real JPEG frames, FLAC audio, ``messages``/``text`` from
:mod:`affectverse_ds.chat`, the benchmark's target as the answer) and keeps ``sizes.json`` up to date, so loader,
collator and training tests can run before (and independently of) the real shard builder; :func:`sample_record`
is one such sample, unwritten. In the package, not in ``tests/``, because ``bench/`` uses it too (benchmarks
do not import tests).
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds
from PIL import Image

from affectverse_ds.benchmarks import Label, get_benchmark
from affectverse_ds.chat import build_messages, render
from affectverse_ds.data import schema


def fixture_frame(sample_index: int, frame_index: int, size: int = schema.FRAME_SIZE) -> np.ndarray:
    """A smooth, moving colour pattern with mild noise (JPEG-realistic rather than white noise)."""
    rng = np.random.default_rng([sample_index, frame_index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = 0.3 * frame_index + 0.7 * sample_index
    rgb = np.stack([
        0.5 + 0.5 * np.sin(2 * np.pi * (xx + phase)),
        0.5 + 0.5 * np.sin(2 * np.pi * (yy + 0.5 * phase)),
        0.5 + 0.5 * np.cos(2 * np.pi * (xx + yy + 0.2 * sample_index)),
    ], axis=-1)
    rgb = rgb * 220 + rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def fixture_audio(sample_index: int, n_samples: int) -> np.ndarray:
    """A tone whose pitch depends on the sample, with a little noise, in [-1, 1]."""
    rng = np.random.default_rng(sample_index)
    t = np.arange(n_samples) / schema.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * (180 + 15 * (sample_index % 20)) * t)
    return (tone + rng.normal(0, 0.01, n_samples)).astype(np.float32)


def _label(bench, i: int) -> Label:
    if bench.group == "discrete":
        return Label(emo=bench.classes[i % len(bench.classes)])
    if bench.group == "sentiment":
        return Label(val=float(((i * 7) % 13 - 6) / 2))  # -3.0 .. 3.0, zero included
    return Label(openset=("happy", "excited") if i % 2 else ("sad",))


def _jpeg(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _flac(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, schema.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_test_shards(
    out_dir: str | Path,
    n: int | Sequence[int],
    *,
    benchmark: str = "meld",
    split: str = "train",
    seconds: float | Callable[[int], float] = 2.0,
    video: bool = True,
    audio: bool = True,
    subtitle: bool = True,
    first_shard: int = 0,
    first_sample: int = 0,
    corrupt_jpeg: Sequence[int] = (),
    frame_size: int = schema.FRAME_SIZE,
) -> list[Path]:
    """Write fixture shards ``{benchmark}-{split}-{index:06d}.tar`` into ``out_dir``, their counts into sizes.json.

    Args:
        n: samples of one shard (int), or samples per shard (list: one shard each).
        seconds: clip length, or a function of the sample index giving it.
        video / audio / subtitle: which modalities the samples have.
        first_shard / first_sample: index offsets, to add shards beside existing ones.
        corrupt_jpeg: sample indices (global) whose first frame is written truncated: the tar is
            fine but the sample cannot be decoded.
    Returns:
        The shard paths written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    get_benchmark(benchmark)  # unknown names fail here, before any file is written
    counts = [n] if isinstance(n, int) else list(n)
    sizes_path = out_dir / schema.SIZES_FILE
    sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
    paths, i = [], first_sample
    for s, count in enumerate(counts):
        path = out_dir / schema.SHARD_PATTERN.format(benchmark=benchmark, split=split, index=first_shard + s)
        with wds.TarWriter(str(path)) as sink:
            for _ in range(count):
                sink.write(sample_record(benchmark, split, i, seconds(i) if callable(seconds) else seconds,
                                         video, audio, subtitle, i in corrupt_jpeg, frame_size))
                i += 1
        sizes[path.name] = count
        paths.append(path)
    sizes_path.write_text(json.dumps(sizes, indent=1, sort_keys=True))
    return paths


def sample_record(benchmark: str, split: str, i: int, seconds: float = 2.0, video: bool = True, audio: bool = True,
                  subtitle: bool = True, corrupt: bool = False, frame_size: int = schema.FRAME_SIZE) -> dict:
    """Tar members of fixture sample ``i``, as a webdataset record (``__key__``, ``json``, ``fNNN.jpg``, ``flac``)."""
    bench = get_benchmark(benchmark)
    name = f"{bench.name}_{split}_{i:05d}"
    label = _label(bench, i)
    answer = bench.target(label)
    sub = f"I can't believe this happened, number {i}." if subtitle else ""
    n_frames = max(1, round(seconds * schema.FPS)) if video else 0
    n_audio = round(seconds * schema.SAMPLE_RATE) if audio else 0
    messages = build_messages(bench.question, sub, answer, has_video=video, has_audio=audio)
    meta = {
        "benchmark": bench.name, "split": split, "name": name, "label": label.to_json(),
        "duration": float(seconds), "fps": schema.FPS, "n_frames": n_frames, "audio_samples": n_audio,
        "sample_rate": schema.SAMPLE_RATE,
        "modalities": {"video": video, "audio": audio, "text": bool(sub)},
        "subtitle": sub, "question": bench.question, "answer": answer,
        "messages": messages, "text": render(messages),
        "source": "affectverse_ds/tools/fixture_shards.py", "source_sha256": "0" * 64, "synthetic": bench.synthetic,
    }
    problems = schema.validate_meta(meta)
    assert not problems, problems
    record = {"__key__": schema.sample_key(bench.name, split, name), schema.META_EXT: json.dumps(meta).encode()}
    for f in range(n_frames):
        data = _jpeg(fixture_frame(i, f, frame_size))
        record[schema.frame_ext(f)] = data[: len(data) // 3] if corrupt and f == 0 else data
    if audio:
        record[schema.AUDIO_EXT] = _flac(fixture_audio(i, n_audio))
    return record
