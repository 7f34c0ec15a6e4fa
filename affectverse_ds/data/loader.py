"""The WebDataset pipeline: shards -> batches, in OpenCLIP's order.

Over 400 lines: the training and evaluation pipelines share shard listing, decoding and skip accounting.

Training (:func:`build_train_loader`), per rank and epoch::

    shard lists per benchmark, repeated by mixing weight
    -> shard shuffle seeded by (seed, epoch): the same order on every rank
    -> split by node (rank::world) -> split by worker
    -> tar reading that logs, counts and skips corrupt samples
    -> sample shuffle buffer -> decode -> model inputs (collator.SampleEncoder) -> batch (collator.collate)

Every rank runs exactly ``train_plan().batches_per_epoch`` batches per epoch: each
worker's stream cycles over its shards without end and is cut at its quota of
batches (``itertools.islice``, per worker), so ranks with fewer samples re-read some
and never leave a collective waiting. Rank and world size are arguments: this
module reads no environment variable and never touches ``torch.distributed``.

Samples reduced by the token budget and corrupt samples skipped are recorded in
each sample's ``meta`` (``reduced``, ``skipped``); :class:`LoaderStats` sums them
for logging.

Evaluation (:func:`build_eval_loader`) reads a split once, without shuffling:
sample ``g`` of the split (shards sorted by name, samples in tar order) goes to
rank ``g % world``, so ranks differ by at most one sample.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from affectverse_ds.benchmarks import get_benchmark
from affectverse_ds.config import AffectVerseConfig, ConfigError
from affectverse_ds.bounded import BoundedReadError, check_regular, read_bounded
from affectverse_ds.data import schema
from affectverse_ds.data.batch import Batch
from affectverse_ds.data.collator import DecodedSample, SampleEncoder, SampleError, collate
from affectverse_ds.data.tars import tar_samples
from affectverse_ds.data.run_length import RunPlan, make_run_plan

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_SKIPS = 50  # more bad samples in a row than this is a bug or a broken dataset, not noise
# exceptions that mean "this sample's bytes are bad"; anything else is a bug and propagates
DATA_ERRORS = (SampleError, OSError, EOFError, tarfile.TarError, ValueError, sf.LibsndfileError,
               Image.DecompressionBombError)


class LoaderError(ValueError):
    """The shards cannot feed the requested loader (one line saying why)."""


# ----------------------------------------------------------------------------- shard lists


@dataclass(frozen=True)
class Shard:
    path: str
    count: int  # samples, from sizes.json


def read_sizes(shard_dir: str | Path) -> dict[str, int]:
    """``sizes.json`` of a shard folder: shard file name -> sample count."""
    path = Path(shard_dir) / schema.SIZES_FILE
    if not path.exists():
        raise LoaderError(f"no {schema.SIZES_FILE} in {shard_dir}: build the shards with data_prep/build_shards.py")
    try:
        sizes = json.loads(read_bounded(path, 16 << 20, schema.SIZES_FILE))
    except BoundedReadError as err:
        raise LoaderError(str(err)) from None
    except (ValueError, RecursionError) as err:
        raise LoaderError(f"{path} is not valid JSON ({type(err).__name__}: {err}); rebuild the shards") from None
    if not isinstance(sizes, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values()):
        raise LoaderError(f"{path} must map shard file names to sample counts (non-negative integers)")
    return sizes


def _check_readable_tar(path: Path) -> None:
    """A shard must at least start with a tar header: a garbage file is a one-line error at start, not a
    traceback from inside a loader worker (a bad sample inside a good tar is skipped and counted later)."""
    try:
        check_regular(path)  # a FIFO or device would block the open, in every worker
    except BoundedReadError as err:
        raise LoaderError(f"shard {err}; rebuild it or remove it from {schema.SIZES_FILE}") from None
    try:
        with tarfile.open(path, mode="r:") as tar:
            tar.next()
    except (tarfile.TarError, OSError) as err:
        raise LoaderError(f"shard {path} is not a readable tar ({type(err).__name__}: {err}); "
                          f"rebuild it or remove it from {schema.SIZES_FILE}") from None


def list_shards(shard_dir: str | Path, benchmark: str, splits: Iterable[str]) -> list[Shard]:
    """The shards of ``benchmark``'s ``splits`` in ``shard_dir``, sorted by name, with their sizes.json counts.

    A shard ``sizes.json`` lists but the folder lacks is refused: the epoch would silently hold fewer samples
    than the plan (and the learning-rate schedule) counts, and an evaluation would score a smaller test set."""
    shard_dir = Path(shard_dir)
    sizes = read_sizes(shard_dir)
    shards = []
    for split in splits:
        prefix = schema.SHARD_PATTERN.split("{index")[0].format(benchmark=benchmark, split=split)
        pattern = prefix + "*.tar"
        paths = sorted(shard_dir.glob(pattern))
        gone = sorted(n for n in sizes if n.startswith(prefix) and n.endswith(".tar") and not (shard_dir / n).exists())
        if gone:
            raise LoaderError(f"{shard_dir / schema.SIZES_FILE} lists {len(gone)} shard(s) missing from the folder "
                              f"({', '.join(gone[:5])}{', ...' if len(gone) > 5 else ''}): restore them or rebuild "
                              f"the shards")
        if not paths:
            raise LoaderError(f"shard pattern {shard_dir / pattern} matches nothing")
        for p in paths:
            if p.name not in sizes:
                raise LoaderError(f"{p.name} is missing from {shard_dir / schema.SIZES_FILE}")
            _check_readable_tar(p)
            shards.append(Shard(str(p), sizes[p.name]))
    return shards


def check_unique_keys(shards: list[Shard]) -> None:
    """Refuse a split whose sample keys repeat across (or within) its shards, in one line naming the first
    key and both shards: an evaluation would score the repeated clips twice and report more samples than
    clips (a split built twice into one folder does this). Reads tar headers only (no member is read)."""
    seen: dict[str, str] = {}
    for shard in shards:
        name, last = Path(shard.path).name, None
        try:
            with tarfile.open(shard.path, mode="r:") as tar:
                for member in tar:
                    key = base_plus_ext(member.name)[0] if member.isfile() else None  # webdataset's own key
                    if key is None or key == last:  # a sample's members are consecutive
                        continue
                    if key in seen:
                        where = f"twice in {name}" if seen[key] == name else f"in both {seen[key]} and {name}"
                        raise LoaderError(f"sample key {key} is {where} (a split written twice into one folder?): "
                                          f"remove one copy; `python -m data_prep.verify_shards "
                                          f"{Path(shard.path).parent}` lists every repeated key")
                    seen[key], last = name, key
        except (tarfile.TarError, OSError):
            continue  # unreadable data is the loader's to count and skip, sample by sample


@dataclass(frozen=True)
class TrainPlan:
    """What one training epoch reads, identical on every rank.

    Args:
        shards: benchmark -> its train shards.
        weights: benchmark -> mixing weight (expected passes over its shards per epoch).
        num_samples: samples in one epoch (sum of weight x samples).
        run: the run's length in micro-batches and optimizer steps (``data/run_length.py``, the one place it is computed).
    """

    shards: dict[str, list[Shard]]
    weights: dict[str, float]
    num_samples: int
    run: RunPlan

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches every rank reads per epoch: whole accumulation windows (see ``data/run_length.py``)."""
        return self.run.batches_per_epoch


def train_plan(cfg: AffectVerseConfig, world: int) -> TrainPlan:
    """The epoch plan of the configured train benchmarks; raises :class:`LoaderError` on an impossible setup."""
    d = cfg.data
    for b in d.train_benchmarks:
        if not get_benchmark(b).train_splits:
            raise LoaderError(f"data.train_benchmarks: {b} has no train split (evaluation only)")
    shards = {b: list_shards(d.shard_dir, b, get_benchmark(b).train_splits) for b in sorted(d.train_benchmarks)}
    weights = {b: float(d.train_benchmarks[b]) for b in shards}
    num_samples = round(sum(w * sum(s.count for s in shards[b]) for b, w in weights.items()))
    try:
        run = make_run_plan(cfg.train, num_samples, world)
    except ConfigError as err:
        raise LoaderError(str(err)) from None
    length = sum(_weighted_count(len(shards[b]), w) for b, w in weights.items())
    workers = max(1, d.num_workers)
    if length < workers * world:
        raise LoaderError(
            f"{length} shards (weighted) are fewer than workers x ranks = {workers} x {world}; "
            f"write smaller shards or lower data.num_workers"
        )
    return TrainPlan(shards, weights, num_samples, run)


def _weighted_count(n: int, weight: float) -> int:
    return math.floor(weight) * n + round((weight - math.floor(weight)) * n)


def epoch_shards(plan: TrainPlan, seed: int, epoch: int) -> list[Shard]:
    """The epoch's shard order, the same on every rank: each benchmark's shards ``floor(w)`` times plus a
    seeded subset for the fraction of ``w``, shuffled with (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    slots: list[Shard] = []
    for b, w in plan.weights.items():
        shards = plan.shards[b]
        slots += shards * math.floor(w)
        extra = round((w - math.floor(w)) * len(shards))
        slots += [shards[i] for i in sorted(rng.choice(len(shards), extra, replace=False))]
    return [slots[i] for i in rng.permutation(len(slots))]


# ----------------------------------------------------------------------------- worker context


def _worker() -> tuple[int, int]:
    """(physical worker id, number of workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _quota(n_batches: int, slot: int, n_slots: int) -> int:
    """Batches among the first ``n_batches`` that round-robin slot ``slot`` of ``n_slots`` produces."""
    return n_batches // n_slots + (1 if slot < n_batches % n_slots else 0)


class SkipCounter:
    """Counts and logs the corrupt samples one worker skipped (a webdataset ``handler``).

    Each worker process holds its own copy; the count reaches the trainer in every
    sample's ``meta["skipped"]`` (see :class:`LoaderStats`).
    """

    def __init__(self) -> None:
        self.count = 0
        self.consecutive = 0

    def __call__(self, exn: Exception) -> bool:
        if not isinstance(exn, DATA_ERRORS):
            raise exn
        self.count += 1
        self.consecutive += 1
        log.warning("skipping a corrupt sample (%d skipped by this worker): %s: %s",
                    self.count, type(exn).__name__, exn)
        if self.consecutive > MAX_CONSECUTIVE_SKIPS:
            raise LoaderError(f"{self.consecutive} corrupt samples in a row (a broken dataset, not noise); "
                              f"last: {exn}") from exn
        return True

    def mark_good(self) -> None:
        self.consecutive = 0


# ----------------------------------------------------------------------------- pipeline stages


def decode_sample(raw: dict[str, Any]) -> DecodedSample:
    """Tar members of one sample -> metadata, frame JPEGs in order (decoded later, only those kept) and audio.

    Any member content that breaks the shard contract (:func:`schema.check_sample`, shared with
    ``verify_shards``) raises :class:`SampleError`, which the skip handler counts. Unreadable frames
    (a header claiming a huge image included) leave the sample without frames: the encoder then skips
    it where video is used, and audio/text settings keep it.
    """
    key = raw.get("__key__", "?")
    problems, sample = schema.check_sample(raw)
    if problems:
        raise SampleError(f"{key}: {'; '.join(problems)}")
    meta = sample.meta
    if sample.frames_unreadable:  # no frame bytes reach the decoder; settings with video skip the sample
        log.warning("%s: video unusable (%s); kept for settings without video", key, sample.frames_unreadable)
    meta["key"] = key
    meta["shard"] = Path(raw.get("__url__", "")).name
    return DecodedSample(meta=meta, frames=sample.frames, audio=sample.audio)


class _Keyed:
    """A pipeline stage on decoded samples whose data errors name the sample's key: a frame the encoder cannot
    decode (a JPEG body cut short) raised PIL's bare "image file is truncated", and the skip line named no sample."""

    def __init__(self, stage):
        self.stage = stage

    def __call__(self, sample: DecodedSample):
        try:
            return self.stage(sample)
        except DATA_ERRORS as err:
            key = sample.meta.get("key", "?")
            if str(err).startswith(f"{key}:"):
                raise
            raise SampleError(f"{key}: {type(err).__name__}: {err}") from err


def _buffer_shuffle(src: Iterator, bufsize: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer of ``bufsize`` samples."""
    if bufsize <= 1:
        yield from src
        return
    buf: list = []
    for item in src:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        k = rng.randrange(bufsize)
        yield buf[k]
        buf[k] = item
    rng.shuffle(buf)
    yield from buf


class _TrainStream(IterableDataset):
    """One rank's training stream for one epoch; each DataLoader worker iterates its own part.

    Worker slots are rotated by ``start_batch`` so that batch ``j`` of the epoch always
    comes from slot ``j % workers``, with or without a resume.
    """

    def __init__(self, plan: TrainPlan, encoder: SampleEncoder, *, seed: int, epoch: int, rank: int, world: int,
                 micro_batch: int, shuffle_buffer: int, start_batch: int):
        super().__init__()
        self.plan, self.encoder = plan, encoder
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.micro_batch, self.shuffle_buffer, self.start_batch = micro_batch, shuffle_buffer, start_batch

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers = _worker()
        slot = (worker + self.start_batch) % n_workers
        node = epoch_shards(self.plan, self.seed, self.epoch)[self.rank::self.world]
        mine = node[slot::n_workers]
        steps = self.plan.batches_per_epoch
        done = _quota(self.start_batch, slot, n_workers)
        left = _quota(steps, slot, n_workers) - done
        tag = f"{self.seed}/{self.epoch}/{self.rank}/{self.world}/{slot}/{n_workers}"
        skips = SkipCounter()
        log.debug("train stream %s: %d shards, %d batches (after %d)", tag, len(mine), left, done)

        if not mine:
            raise LoaderError(f"train stream {tag} has no shard")
        pipeline = wds.DataPipeline(
            lambda: _shard_passes(mine, tag, skips, self.shuffle_buffer),
            wds.map(decode_sample, handler=skips),
            # resume: skip the consumed samples after the cheap decode (json, flac; frames stay JPEG bytes),
            # so a sample that fails there is skipped exactly as in the uninterrupted run
            lambda src: islice(src, done * self.micro_batch, None),
            wds.map(_Keyed(self.encoder), handler=skips),
            lambda src: _stamp(src, skips, slot),
            wds.batched(self.micro_batch, collation_fn=collate, partial=False),
        )
        return islice(iter(pipeline), max(left, 0))


def _shard_passes(shards: list[Shard], tag: str, skips: SkipCounter, shuffle_buffer: int) -> Iterator[dict]:
    """Raw samples of a worker's shards, pass after pass without end, each pass through the shuffle buffer.

    The buffer is drained at the end of a pass, so every sample of the worker's
    shards comes once before any comes twice. Later passes read the shards in a
    new seeded order.
    """
    order = list(shards)
    rng = random.Random(f"shuffle/{tag}")
    for n_pass in range(1 << 62):
        if n_pass:
            random.Random(f"pass/{tag}/{n_pass}").shuffle(order)
        raw = tar_samples(handler=skips)(iter([{"url": s.path} for s in order]))
        n = 0
        for sample in _buffer_shuffle(raw, shuffle_buffer, rng):
            n += 1
            yield sample
        if n == 0:
            raise LoaderError(f"train stream {tag}: a whole pass over {len(order)} shards gave no sample")


def _stamp(samples: Iterator, skips: SkipCounter, slot: int) -> Iterator:
    """Record in each sample's meta which worker slot made it and how many corrupt samples that slot skipped.

    Each sample is held until the next one arrives (or the stream ends) and stamped then, so the count on
    a finite stream's last sample includes the corrupt samples after it: the skips of a whole pass reach
    :class:`LoaderStats` (all but those of a worker that yields no sample at all).
    """
    held = None
    for s in samples:
        skips.mark_good()
        if held is not None:
            held.meta["skipped"] = skips.count
            yield held
        s.meta["worker"] = slot
        held = s
    if held is not None:
        held.meta["skipped"] = skips.count
        yield held


# ----------------------------------------------------------------------------- loaders


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers are processes; one BLAS/FFT thread each keeps them from fighting


def _extractor(cfg: AffectVerseConfig):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(cfg.backbone.path)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """A LoaderError raised in a DataLoader worker arrives with the worker's traceback in its message;
    keep its last line, so the launchers print one line."""
    try:
        yield
    except LoaderError as err:
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        if len(lines) <= 1:
            raise
        last = lines[-1].strip()
        prefix = f"{LoaderError.__name__}: "
        raise LoaderError(last[len(prefix):] if last.startswith(prefix) else last) from None


class TrainLoader:
    """Batches of one rank for one epoch: ``len()`` batches from ``start_batch`` to ``batches_per_epoch``.

    Iterate it once per epoch (build a new one for the next epoch).
    """

    def __init__(self, stream: _TrainStream, num_workers: int, pin_memory: bool):
        self.batches_per_epoch = stream.plan.batches_per_epoch
        self.num_samples = stream.plan.num_samples
        self.start_batch = stream.start_batch
        self.epoch = stream.epoch
        self.stats = LoaderStats()  # samples and skips of the batches yielded so far (the trainer logs them)
        self.loader = DataLoader(
            stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
            worker_init_fn=_worker_init if num_workers else None,
            prefetch_factor=2 if num_workers else None, persistent_workers=False,
        )

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[Batch]:
        with _one_line_errors():
            for batch in self.loader:
                self.stats.update(batch)
                yield batch


def build_train_loader(
    cfg: AffectVerseConfig,
    tokenizer,
    *,
    rank: int,
    world: int,
    epoch: int,
    start_batch: int = 0,
    extractor=None,
    pin_memory: bool = False,
) -> TrainLoader:
    """The training batches of ``rank`` (of ``world``) for ``epoch``.

    Args:
        cfg: the config (``data``, ``train.seed``, ``train.micro_batch``, ``backbone.path`` are read).
        tokenizer: the backbone tokenizer.
        start_batch: batches of this epoch already consumed (resume): the loader yields exactly
            the batches ``start_batch ..`` of an uninterrupted run, skipping the earlier samples
            before they are decoded. Resume with the same ``data.num_workers`` and world size.
        extractor: the backbone's ``WhisperFeatureExtractor`` (loaded from ``backbone.path`` when None).
    Returns:
        A :class:`TrainLoader` of ``batches_per_epoch - start_batch`` batches.
    """
    if not 0 <= rank < world:
        raise LoaderError(f"rank {rank} is outside world size {world}")
    plan = train_plan(cfg, world)
    if not 0 <= start_batch <= plan.batches_per_epoch:
        raise LoaderError(f"start_batch {start_batch} is outside 0..{plan.batches_per_epoch}")
    encoder = SampleEncoder(tokenizer, extractor or _extractor(cfg), cfg.data, "avt",
                            input_modality_dropout=cfg.data.input_modality_dropout, seed=cfg.train.seed * 1000 + epoch)
    stream = _TrainStream(
        plan, encoder, seed=cfg.train.seed, epoch=epoch, rank=rank, world=world,
        micro_batch=cfg.train.micro_batch, shuffle_buffer=cfg.data.shuffle_buffer, start_batch=start_batch,
    )
    return TrainLoader(stream, cfg.data.num_workers, pin_memory)


class _EvalStream(IterableDataset):
    """One rank's share of an evaluation split; each DataLoader worker reads whole shards."""

    def __init__(self, shards: list[Shard], offsets: list[int], encoder: SampleEncoder, rank: int, world: int,
                 batch_size: int):
        super().__init__()
        self.shards, self.offsets, self.encoder = shards, offsets, encoder
        self.rank, self.world, self.batch_size = rank, world, batch_size

    def __iter__(self) -> Iterator[Batch]:
        worker, n_workers = _worker()
        mine = list(range(worker, len(self.shards), n_workers))
        skips = SkipCounter()
        pipeline = wds.DataPipeline(
            wds.SimpleShardList([self.shards[i].path for i in mine]),
            tar_samples(handler=skips),
            lambda src: self._my_samples(src, {self.shards[i].path: self.offsets[i] for i in mine}),
            wds.map(decode_sample, handler=skips),
            wds.map(_Keyed(self.encoder), handler=skips),
            lambda src: _stamp(src, skips, worker),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
        )
        return iter(pipeline)

    def _my_samples(self, src: Iterator[dict], offsets: dict[str, int]) -> Iterator[dict]:
        """Keep sample ``g`` (its index in the whole split) when ``g % world == rank``."""
        position: dict[str, int] = {}
        for raw in src:
            url = raw["__url__"]
            g = offsets[url] + position.get(url, 0)
            position[url] = position.get(url, 0) + 1
            if g % self.world == self.rank:
                yield raw


@dataclass
class EvalLoader:
    """Batches of one rank's share of a split, every sample of the split on exactly one rank.

    Args:
        num_samples: samples this rank yields (from sizes.json; fewer if some are corrupt).
        total_samples: samples of the split over all ranks.
    """

    loader: DataLoader
    num_samples: int
    total_samples: int
    num_batches: int
    setting: str

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        with _one_line_errors():
            yield from self.loader


def build_eval_loader(
    cfg: AffectVerseConfig,
    tokenizer,
    benchmark: str,
    *,
    rank: int,
    world: int,
    setting: str = "avt",
    split: str | None = None,
    batch_size: int | None = None,
    extractor=None,
) -> EvalLoader:
    """Evaluation batches of ``benchmark``'s ``split`` (its test split by default) for ``rank`` of ``world``.

    No shuffle and no resampling. Sample ``g`` of the split (shards sorted by name,
    samples in tar order) belongs to rank ``g % world``; within a rank, loader
    workers take whole shards (``i % workers``) and keep that rank's samples. The
    last batch of each worker may be short.

    Args:
        setting: ``avt``, ``at`` (no video), ``vt`` (no audio), ``av`` (no subtitle) or ``t``;
            removed modalities are dropped from the chat, which is re-rendered.
        batch_size: samples per batch (``eval.batch_size`` when None).
    """
    if not 0 <= rank < world:
        raise LoaderError(f"rank {rank} is outside world size {world}")
    split = split or get_benchmark(benchmark).test_split
    shards = list_shards(cfg.data.shard_dir, benchmark, [split])
    batch_size = batch_size or cfg.eval.batch_size
    offsets = np.concatenate([[0], np.cumsum([s.count for s in shards])]).tolist()
    encoder = SampleEncoder(tokenizer, extractor or _extractor(cfg), cfg.data, setting)
    workers = min(cfg.data.num_workers, len(shards))
    stream = _EvalStream(shards, offsets[:-1], encoder, rank, world, batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=workers,
                        worker_init_fn=_worker_init if workers else None)
    per_worker = [0] * max(workers, 1)
    for i, (shard, off) in enumerate(zip(shards, offsets)):
        per_worker[i % max(workers, 1)] += len(range((rank - off) % world, shard.count, world))
    return EvalLoader(
        loader=loader, num_samples=sum(per_worker), total_samples=offsets[-1],
        num_batches=sum(math.ceil(n / batch_size) for n in per_worker), setting=setting,
    )


# ----------------------------------------------------------------------------- stats


@dataclass
class LoaderStats:
    """Running counts from batch metadata: samples seen, samples reduced by the token budget,
    samples over budget, and corrupt samples skipped (the largest count reported by each worker)."""

    samples: int = 0
    reduced: int = 0
    over_budget: int = 0
    skipped_by_worker: dict[int, int] = field(default_factory=dict)

    def update(self, batch: Batch) -> None:
        for m in batch["meta"]:
            self.samples += 1
            self.reduced += bool(m.get("reduced"))
            self.over_budget += bool(m.get("over_budget"))
            w = m.get("worker", 0)
            self.skipped_by_worker[w] = max(self.skipped_by_worker.get(w, 0), m.get("skipped", 0))

    @property
    def skipped(self) -> int:
        return sum(self.skipped_by_worker.values())
