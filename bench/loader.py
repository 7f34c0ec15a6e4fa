"""Loader throughput: collated samples/s per loader worker for 6-second clips (224 px, 3 FPS, 16 kHz audio).

    OMP_NUM_THREADS=1 .venv/bin/python bench/loader.py [--samples 96] [--workers 0 2] [--step-rate 0.5]

Writes fixture shards following ``data/schema.py`` (webdataset TarWriter, real
JPEG frames and FLAC audio) into a temporary folder, then times

1. each stage of one sample in this process (decode, frames, patches, mel, tokens, collate), and
2. the whole training loader (``build_train_loader``) end to end, per worker count;
   ``--workers 0`` runs the pipeline in this process, which is one loader worker.

With ``--step-rate`` (optimizer micro-steps per second of the training job) it
says how many workers a rank needs so that the GPU never waits on data.
Target: >= 20 samples/s per worker.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from PIL import Image  # noqa: E402

from affectverse_ds import preflight  # noqa: E402
from affectverse_ds.benchmarks import Label, get_benchmark  # noqa: E402
from affectverse_ds.chat import build_messages, render  # noqa: E402
from affectverse_ds.config import load_config  # noqa: E402
from affectverse_ds.data import processing, schema  # noqa: E402
from affectverse_ds.data.collator import SampleEncoder, collate  # noqa: E402
from affectverse_ds.data.loader import build_train_loader, decode_sample  # noqa: E402

SECONDS = 6.0


def _frame(i: int, f: int) -> np.ndarray:
    """A face-sized smooth pattern that moves over time, with sensor-like noise (JPEG ~ real frame sizes)."""
    rng = np.random.default_rng([i, f])
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224
    img = np.stack([np.sin(6 * xx + 0.2 * f + i), np.cos(5 * yy - 0.1 * f), np.sin(4 * (xx + yy) + i)], -1)
    img = 127 + 100 * img + rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_bench_shards(out: Path, n_samples: int, per_shard: int) -> None:
    """6-second meld-train samples, ``per_shard`` to a tar, plus sizes.json."""
    bench = get_benchmark("meld")
    sizes, i = {}, 0
    n_frames, n_audio = int(SECONDS * schema.FPS), int(SECONDS * schema.SAMPLE_RATE)
    for s in range((n_samples + per_shard - 1) // per_shard):
        name = schema.SHARD_PATTERN.format(benchmark="meld", split="train", index=s)
        with wds.TarWriter(str(out / name)) as sink:
            count = min(per_shard, n_samples - i)
            for _ in range(count):
                label = Label(emo=bench.classes[i % len(bench.classes)])
                sub = f"Oh my god, you guys, sample {i} is here!"
                messages = build_messages(bench.question, sub, bench.target(label), True, True)
                meta = {
                    "benchmark": "meld", "split": "train", "name": f"bench_{i:05d}", "label": label.to_json(),
                    "duration": SECONDS, "fps": schema.FPS, "n_frames": n_frames, "audio_samples": n_audio,
                    "sample_rate": schema.SAMPLE_RATE, "modalities": {"video": True, "audio": True, "text": True},
                    "subtitle": sub, "question": bench.question, "answer": bench.target(label),
                    "messages": messages, "text": render(messages), "source": "bench/loader.py",
                    "source_sha256": "0" * 64, "synthetic": False,
                }
                assert not schema.validate_meta(meta)
                key = schema.sample_key("meld", "train", meta["name"])
                record = {"__key__": key, "json": json.dumps(meta).encode()}
                for f in range(n_frames):
                    buf = io.BytesIO()
                    Image.fromarray(_frame(i, f)).save(buf, format="JPEG", quality=90)
                    record[schema.frame_ext(f)] = buf.getvalue()
                t = np.arange(n_audio) / schema.SAMPLE_RATE
                audio = 0.3 * np.sin(2 * np.pi * (150 + 40 * np.sin(t)) * t) + 0.01 * np.random.default_rng(i).normal(
                    size=n_audio)
                buf = io.BytesIO()
                sf.write(buf, audio.astype(np.float32), schema.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                record[schema.AUDIO_EXT] = buf.getvalue()
                sink.write(record)
                i += 1
        sizes[name] = count
    (out / schema.SIZES_FILE).write_text(json.dumps(sizes))


def _ms(fn, repeats: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats * 1e3


def stage_times(shard: Path, encoder: SampleEncoder, micro_batch: int) -> None:
    raw = next(iter(wds.DataPipeline(wds.SimpleShardList([str(shard)]), wds.tarfile_to_samples())))
    sample = decode_sample(dict(raw))
    frames = processing.decode_frames(sample.frames)
    text = sample.meta["text"]
    encoded = encoder(sample)
    rows = [
        ("decode (json + flac)", _ms(lambda: decode_sample(dict(raw)), 20)),
        (f"jpeg -> array ({len(sample.frames)} frames)", _ms(lambda: processing.decode_frames(sample.frames), 20)),
        ("patchify", _ms(lambda: processing.patchify_frames(frames), 20)),
        ("whisper log-mel (6 s)", _ms(lambda: processing.audio_features(sample.audio, encoder.extractor), 20)),
        ("tokenise", _ms(lambda: encoder.tokenizer(text, add_special_tokens=False), 50)),
        ("SampleEncoder (all of the above but decode)", _ms(lambda: encoder(sample), 20)),
        (f"collate, per sample (batch {micro_batch})", _ms(lambda: collate([encoded] * micro_batch), 20) / micro_batch),
    ]
    print(f"per-sample stage times (this process, 1 thread); sequence {len(encoded.input_ids)} tokens, "
          f"{encoded.pixel_values.shape[0]} patches, {encoded.audio_features.shape[1]} mel frames")
    for name, ms in rows:
        print(f"  {name:<46} {ms:7.2f} ms")


def loader_rate(cfg, tokenizer, extractor, workers: int) -> tuple[float, float, int]:
    """One whole epoch: (wall samples/s after the first batch, samples per CPU-second of all loader
    processes, samples). The whole epoch, so no prefetched batch is made but not counted."""
    cfg.data.num_workers = workers
    loader = build_train_loader(cfg, tokenizer, rank=0, world=1, epoch=0, extractor=extractor)
    cpu0, children0 = time.process_time(), _children_cpu()
    it = iter(loader)
    first = len(next(it)["meta"])  # worker start-up, shard open and the shuffle-buffer fill: not in the wall rate
    n, t = 0, time.perf_counter()
    for batch in it:
        n += len(batch["meta"])
    wall = time.perf_counter() - t
    del it  # joins the workers, so their CPU time is counted
    gc.collect()
    cpu = time.process_time() - cpu0 + _children_cpu() - children0
    return n / wall, (n + first) / cpu, n + first


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=96, help="samples written (6 s each), one epoch timed")
    ap.add_argument("--per-shard", type=int, default=24)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    ap.add_argument("--step-rate", type=float, default=None, help="training micro-steps/s per rank to compare with")
    ap.add_argument("--backbone", default="artifacts/tiny_backbone", help="tokenizer + preprocessor directory")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from transformers import WhisperFeatureExtractor

    from affectverse_ds.model.backbone import load_tokenizer

    tmp_root = tempfile.gettempdir()  # fixture shards: about 0.5 MiB a 6 s clip, 1 MiB a sample leaves room
    preflight.exit_on_failure(lambda: preflight.require([lambda: preflight.writable(tmp_root), lambda: preflight.free_disk(
        tmp_root, args.samples * preflight.MiB, "the loader bench's fixture shards")]))
    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(args.backbone)
        if not backbone.exists():
            from affectverse_ds.tools.make_tiny_backbone import make_tiny_backbone

            backbone = make_tiny_backbone(Path(tmp) / "backbone")
        tokenizer, extractor = load_tokenizer(backbone), WhisperFeatureExtractor.from_pretrained(backbone)
        shards = Path(tmp) / "shards"
        shards.mkdir()
        t = time.perf_counter()
        write_bench_shards(shards, args.samples, args.per_shard)
        size = sum(p.stat().st_size for p in shards.glob("*.tar")) / args.samples / 1024
        print(f"wrote {args.samples} samples of {SECONDS:.0f} s (224 px, 3 FPS, 16 kHz) in "
              f"{time.perf_counter() - t:.1f} s, {size:.0f} KiB/sample; cpu cores: {os.cpu_count()}")
        cfg = load_config(None, [f"data.shard_dir={shards}", "data.train_benchmarks={meld: 1.0}",
                                 f"train.micro_batch={args.micro_batch}", "data.shuffle_buffer=20"])
        encoder = SampleEncoder(tokenizer, extractor, cfg.data)
        stage_times(next(shards.glob("*.tar")), encoder, args.micro_batch)

        print(f"\nend-to-end build_train_loader (micro batch {args.micro_batch}); load average before: "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for workers in args.workers:
            rate, per_cpu, n = loader_rate(cfg, tokenizer, extractor, workers)
            per_worker = rate / max(workers, 1)
            verdict = "meets" if per_cpu >= 20 else "misses"
            print(f"  num_workers={workers}: {rate:6.1f} samples/s wall ({per_worker:5.1f} per worker), "
                  f"{per_cpu:5.1f} samples per CPU-second = per worker on a core of its own "
                  f"({verdict} the 20/s target; {n} samples)")
            if args.step_rate:
                need = args.step_rate * args.micro_batch
                print(f"    training at {args.step_rate} steps/s x micro {args.micro_batch} consumes {need:.1f} "
                      f"samples/s per rank: loader/step ratio {rate / need:.1f}x here, "
                      f"{int(np.ceil(need / per_cpu))} worker(s) on free cores suffice")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
