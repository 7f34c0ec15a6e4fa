"""Loader: seeded shard order shared by ranks, equal steps on uneven shards, exact resume, corrupt data, eval split."""
from __future__ import annotations

import collections
import json

import pytest

from affectverse_ds.config import load_config
from affectverse_ds.data.loader import (
    LoaderError, LoaderStats, build_eval_loader, build_train_loader, epoch_shards, train_plan,
)

FAST = dict(seconds=1.0, frame_size=56)  # 3 small frames: the loader logic, not the pixels, is under test


def _cfg(shard_dir, tiny_backbone_dir, *extra, workers=0, micro=2, weights="{meld: 1.0}"):
    return load_config(None, [
        f"data.shard_dir={shard_dir}", f"data.train_benchmarks={weights}", f"data.num_workers={workers}",
        f"train.micro_batch={micro}", "train.grad_accum=1", f"backbone.path={tiny_backbone_dir}",
        "data.shuffle_buffer=5", *extra,
    ])


def _names(loader) -> list[list[str]]:
    return [[m["name"] for m in batch["meta"]] for batch in loader]


@pytest.fixture
def uneven(tmp_path, write_shards):
    """Five meld train shards of very different sizes (18 samples)."""
    write_shards(tmp_path, [7, 1, 2, 5, 3], **FAST)
    return tmp_path


def test_epoch_shard_order_is_seeded_and_rank_independent(uneven, tiny_backbone_dir):
    plan = train_plan(_cfg(uneven, tiny_backbone_dir), world=2)
    order0 = [s.path for s in epoch_shards(plan, seed=42, epoch=0)]
    assert order0 == [s.path for s in epoch_shards(plan, seed=42, epoch=0)]
    assert sorted(order0) == sorted(s.path for s in plan.shards["meld"])
    later = [[s.path for s in epoch_shards(plan, seed=42, epoch=e)] for e in range(1, 6)]
    assert any(o != order0 for o in later)  # the order changes with the epoch


def test_same_batches_for_same_seed_epoch_rank(uneven, tiny_backbone_dir, tokenizer, extractor):
    cfg = _cfg(uneven, tiny_backbone_dir)
    run = lambda epoch, rank: _names(build_train_loader(cfg, tokenizer, rank=rank, world=2, epoch=epoch,  # noqa: E731
                                                        extractor=extractor))
    first = run(0, 0)
    assert first == run(0, 0)
    assert first != run(1, 0)
    rank0 = {n for b in first for n in b}
    rank1 = {n for b in run(0, 1) for n in b}
    assert not rank0 & rank1  # each rank reads its own shards


def test_every_rank_runs_the_same_number_of_steps(uneven, tiny_backbone_dir, tokenizer, extractor):
    # 18 samples over 5 uneven shards, 2 ranks x 2 workers, micro 3: 3 steps each (not a multiple of
    # the workers), whatever its shards hold
    cfg = _cfg(uneven, tiny_backbone_dir, workers=2, micro=3)
    assert train_plan(cfg, world=2).batches_per_epoch == 3
    for rank in (0, 1):
        loader = build_train_loader(cfg, tokenizer, rank=rank, world=2, epoch=3, extractor=extractor)
        batches = _names(loader)
        assert len(batches) == len(loader) == 3 and all(len(b) == 3 for b in batches)


def test_resume_gives_the_batches_of_an_uninterrupted_run(uneven, tiny_backbone_dir, tokenizer, extractor):
    cfg = _cfg(uneven, tiny_backbone_dir, "data.shuffle_buffer=3", workers=2, micro=1)
    full = list(build_train_loader(cfg, tokenizer, rank=1, world=2, epoch=0, extractor=extractor))
    assert len(full) == 9
    for start in (3, 4):  # both parities of the worker round-robin
        tail = list(build_train_loader(cfg, tokenizer, rank=1, world=2, epoch=0, start_batch=start,
                                       extractor=extractor))
        assert [b["meta"][0]["name"] for b in tail] == [b["meta"][0]["name"] for b in full[start:]]
        assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(tail, full[start:]))


def test_mixing_weights_repeat_and_subsample_shards(tmp_path, tiny_backbone_dir, write_shards):
    write_shards(tmp_path, [2, 2, 2, 2], **FAST)
    write_shards(tmp_path, [3, 3], benchmark="cmumosi", **FAST)
    cfg = _cfg(tmp_path, tiny_backbone_dir, weights="{meld: 0.5, cmumosi: 2.0}")
    plan = train_plan(cfg, world=1)
    assert plan.num_samples == 0.5 * 8 + 2 * 6
    for epoch in range(3):
        per_bench = collections.Counter(s.path.split("/")[-1].split("-")[0] for s in epoch_shards(plan, 0, epoch))
        assert per_bench == {"meld": 2, "cmumosi": 4}


def test_corrupt_sample_is_skipped_and_counted(tmp_path, tiny_backbone_dir, tokenizer, extractor, write_shards):
    write_shards(tmp_path, [4, 4], corrupt_jpeg=[5], **FAST)
    cfg = _cfg(tmp_path, tiny_backbone_dir, micro=1)
    stats = LoaderStats()
    names = []
    for batch in build_train_loader(cfg, tokenizer, rank=0, world=1, epoch=0, extractor=extractor):
        stats.update(batch)
        names += [m["name"] for m in batch["meta"]]
    assert len(names) == 8 and "meld_train_00005" not in names
    assert stats.skipped == 1 and stats.samples == 8


def test_truncated_shard_does_not_stop_training(tmp_path, tiny_backbone_dir, tokenizer, extractor, write_shards):
    paths = write_shards(tmp_path, [4, 4], **FAST)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])  # a half-copied shard
    cfg = _cfg(tmp_path, tiny_backbone_dir, micro=2)
    stats = LoaderStats()
    batches = list(build_train_loader(cfg, tokenizer, rank=0, world=1, epoch=0, extractor=extractor))
    for b in batches:
        stats.update(b)
    assert len(batches) == 4 and stats.skipped >= 1
    assert all(m["shard"] != paths[1].name or m["name"] < "meld_train_00006" for b in batches for m in b["meta"])


def test_shard_pattern_matching_nothing_is_one_line(tmp_path, tiny_backbone_dir, write_shards):
    write_shards(tmp_path, [2], **FAST)
    with pytest.raises(LoaderError, match=r"iemocap-train-\*\.tar matches nothing"):
        train_plan(_cfg(tmp_path, tiny_backbone_dir, weights="{meld: 1.0, iemocap: 1.0}"), world=1)


def test_evaluation_only_benchmark_cannot_train(uneven, tiny_backbone_dir):
    with pytest.raises(LoaderError, match="ovmerd has no train split"):
        train_plan(_cfg(uneven, tiny_backbone_dir, weights="{meld: 1.0, ovmerd: 1.0}"), world=1)


def test_fewer_shards_than_workers_times_ranks(uneven, tiny_backbone_dir):
    with pytest.raises(LoaderError, match=r"5 shards .* fewer than workers x ranks = 2 x 3"):
        train_plan(_cfg(uneven, tiny_backbone_dir, workers=2), world=3)


def test_missing_sizes_entry(uneven, tiny_backbone_dir):
    sizes = json.loads((uneven / "sizes.json").read_text())
    del sizes["meld-train-000002.tar"]
    (uneven / "sizes.json").write_text(json.dumps(sizes))
    with pytest.raises(LoaderError, match="meld-train-000002.tar is missing from"):
        train_plan(_cfg(uneven, tiny_backbone_dir), world=1)


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_reads_every_sample_exactly_once_across_ranks(tmp_path, tiny_backbone_dir, tokenizer, extractor,
                                                           write_shards, workers):
    write_shards(tmp_path, [4, 1, 3], split="test", **FAST)
    cfg = _cfg(tmp_path, tiny_backbone_dir, workers=workers)
    seen, counts = [], []
    for rank in range(3):
        loader = build_eval_loader(cfg, tokenizer, "meld", rank=rank, world=3, batch_size=2, extractor=extractor)
        names = [n for b in _names(loader) for n in b]
        assert len(names) == loader.num_samples and len(list(loader)) == len(loader)
        seen += names
        counts.append(len(names))
    assert sorted(seen) == [f"meld_test_{i:05d}" for i in range(8)]
    assert max(counts) - min(counts) <= 1


def test_eval_setting_drops_the_modality(tmp_path, tiny_backbone_dir, tokenizer, extractor, write_shards):
    write_shards(tmp_path, [3], split="test", **FAST)
    cfg = _cfg(tmp_path, tiny_backbone_dir)
    batches = list(build_eval_loader(cfg, tokenizer, "meld", rank=0, world=1, setting="at", extractor=extractor))
    assert batches and all("pixel_values_videos" not in b and b["has_audio"].all() for b in batches)
    assert all(m["setting"] == "at" for b in batches for m in b["meta"])
