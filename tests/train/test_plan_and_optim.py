"""The run plan's arithmetic, weight-decay groups on the real model, the schedule, and the save-side helpers
(keep_last pruning, RNG round trip), the metrics logger and the FLOP counter: no engine, no launcher."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from affectverse_ds.config import ConfigError, load_config
from affectverse_ds.data.run_length import make_run_plan

REPO = Path(__file__).resolve().parents[2]


def _train(*overrides: str):
    return load_config(None, list(overrides)).train


# ----------------------------------------------------------------------------- the run plan


def test_paper_preset_plan_for_44k_clips_on_8_gpus():
    """launch/configs/affectverse_7b.yaml: micro 4 x accum 8 x 8 GPUs = 256 per step, 3 epochs, 3% warm-up."""
    t = load_config(REPO / "launch/configs/affectverse_7b.yaml").train
    plan = make_run_plan(t, samples_per_epoch=44_000, world_size=8)
    assert plan.micro_batches_per_epoch == 1375  # 44000 // (4 x 8)
    assert plan.steps_per_epoch == 171 and plan.left_out_per_epoch == 7  # 1375 = 171 x 8 + 7
    assert plan.total_steps == 513 and plan.warmup_steps == 16  # ceil(0.03 x 513) = ceil(15.39)
    assert "513 total steps (3 epochs), 16 warm-up steps" in plan.describe()


@pytest.mark.parametrize("samples, micro, accum, world, micro_batches, steps, left_out", [
    (13, 1, 3, 1, 13, 4, 1),   # a partial window of 1 micro-batch is left out of each epoch
    (13, 2, 1, 1, 6, 6, 0),
    (100, 2, 4, 2, 25, 6, 1),
    (96, 2, 4, 2, 24, 6, 0),   # exact
])
def test_steps_per_epoch_count_whole_accumulation_windows(samples, micro, accum, world, micro_batches, steps,
                                                          left_out):
    plan = make_run_plan(_train(f"train.micro_batch={micro}", f"train.grad_accum={accum}", "train.epochs=2"),
                         samples, world)
    assert (plan.micro_batches_per_epoch, plan.steps_per_epoch, plan.left_out_per_epoch) == \
        (micro_batches, steps, left_out)
    assert plan.batches_per_epoch == steps * accum and plan.total_steps == 2 * steps


def test_max_steps_sets_the_run_length_and_the_warmup():
    plan = make_run_plan(_train("train.max_steps=100", "train.warmup_ratio=0.03", "train.grad_accum=2"), 1000, 2)
    assert (plan.total_steps, plan.warmup_steps, plan.max_steps) == (100, 3, True)  # not 4 from 3.0000000000000004
    assert "(train.max_steps)" in plan.describe()


def test_an_epoch_without_an_optimizer_step_is_refused():
    with pytest.raises(ConfigError, match=r"23 samples per epoch make no optimizer step of .* = 24 samples"):
        make_run_plan(_train("train.micro_batch=1", "train.grad_accum=3"), 23, 8)


def test_the_loader_reads_whole_windows(two_benchmark_shards, tiny_backbone_dir):
    """13 weighted samples, micro 1, accumulation 3: the loader yields 12 micro-batches (4 windows) per epoch."""
    from affectverse_ds.data.loader import build_train_loader, train_plan
    from affectverse_ds.model.backbone import load_tokenizer

    cfg = load_config(REPO / "launch/configs/tiny.yaml", [
        f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={two_benchmark_shards}", "data.num_workers=0",
        "data.train_benchmarks={meld: 1.0, cmumosi: 2.0}", "train.micro_batch=1", "train.grad_accum=3"])
    plan = train_plan(cfg, world=1)
    assert (plan.num_samples, plan.run.micro_batches_per_epoch, plan.batches_per_epoch) == (13, 13, 12)
    loader = build_train_loader(cfg, load_tokenizer(tiny_backbone_dir), rank=0, world=1, epoch=0)
    assert len(loader) == 12 and sum(1 for _ in loader) == 12


# ----------------------------------------------------------------------------- weight decay


def test_weight_decay_groups_on_the_real_model(tiny_backbone_dir):
    """No decay on embeddings (type_emb), learned queries/tags/steps (imagine.*.future, imagine.*.step, tags,
    mama_*.queries), alpha, LayerNorm weights and biases; decay on Linear weights, LoRA's included."""
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.train.optim import param_groups

    cfg = load_config(REPO / "launch/configs/tiny.yaml", [f"backbone.path={tiny_backbone_dir}"])
    model = build_model(cfg, "cpu")
    trainable = model.trainable_parameters()
    groups = param_groups(model, trainable, 0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    names = {id(p): n for n, p in trainable}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert decay | no_decay == set(names.values()) and not decay & no_decay

    for name in ("ewm.tags", "ewm.imagine.0.future", "ewm.imagine.1.step", "ewm.type_emb.weight",
                 "ewm.mama_dual.queries", "ewm.mama_single.queries", "ewm.alpha", "ewm.up_norm.weight",
                 "ewm.up_norm.bias", "ewm.up.bias", "ewm.imagine.0.block.layers.0.norm_q.weight",
                 "ewm.imagine.0.block.norm.weight", "ewm.imagine.0.block.layers.0.ffn.0.bias"):
        assert name in no_decay, name
    for name in ("ewm.down.0.weight", "ewm.w_r.weight", "ewm.up.weight", "ewm.imagine.0.out.weight",
                 "ewm.imagine.0.block.layers.0.attn.q.weight", "ewm.mama_dual.block.layers.0.ffn.2.weight"):
        assert name in decay, name
    lora = {n for n in names.values() if "lora_" in n}
    assert lora and lora <= decay  # LoRA's A and B are Linear weights
    assert not any(n.endswith(".bias") or "norm" in n for n in decay)


# ----------------------------------------------------------------------------- the schedule


def test_scheduler_is_transformers_cosine_with_linear_warmup():
    from affectverse_ds.train.optim import build_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = build_scheduler(total_steps=100, warmup_steps=4)(opt)
    lrs = []
    for _ in range(101):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert lrs[52] == pytest.approx(1.0, abs=1e-9)  # half way through the cosine part
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


# ----------------------------------------------------------------------------- save side


def _dirs(tmp_path: Path, steps: list[int]) -> list[Path]:
    out = []
    for s in steps:
        p = tmp_path / f"step_{s:06d}"
        p.mkdir()
        (p / "COMPLETE").write_text(f"{s}\n")
        out.append(p)
    return out


def test_keep_last_never_deletes_the_newest(tmp_path):
    from affectverse_ds.train.checkpoint import complete_checkpoints, prune_list

    _dirs(tmp_path, [3, 6, 9, 12])
    done = complete_checkpoints(tmp_path)
    assert prune_list(done, tmp_path / "step_000012", keep_last=2) == [tmp_path / "step_000003",
                                                                        tmp_path / "step_000006"]
    # resumed from step 3 and saved step 6 again while 9 and 12 (an abandoned continuation) exist:
    # step 6 is the newest save, kept even with keep_last 1
    assert tmp_path / "step_000006" not in prune_list(done, tmp_path / "step_000006", keep_last=1)
    assert prune_list(done, tmp_path / "step_000006", keep_last=1) == [tmp_path / f"step_{s:06d}" for s in (3, 9, 12)]
    assert prune_list(done[:1], tmp_path / "step_000003", keep_last=1) == []


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    from affectverse_ds.train.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)
    torch.save(rng_state(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), random.gauss(0, 1))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), random.gauss(0, 1)) == first


def test_generator_state_round_trip():
    g = torch.Generator().manual_seed(7)
    torch.rand(5, generator=g)
    state = g.get_state()
    ahead = torch.rand(4, generator=g)
    other = torch.Generator().manual_seed(0)
    other.set_state(state.clone())
    assert torch.equal(torch.rand(4, generator=other), ahead)


# ----------------------------------------------------------------------------- logging


def test_metrics_logger_writes_jsonl_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from affectverse_ds.train.logging import MetricsLogger

    logger = MetricsLogger(tmp_path / "run", enabled=True)
    logger.log(1, {"loss/total": 2.5, "lr": 1e-4, "mfu": None})
    logger.log(2, {"loss/total": 2.0, "lr": 2e-4, "mfu": None})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/total"], r["lr"], r["mfu"]) for r in rows] == \
        [(1, 2.5, 1e-4, None), (2, 2.0, 2e-4, None)]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss/total", "lr"}  # None values are left out of TensorBoard
    assert [(e.step, e.value) for e in events.Scalars("loss/total")] == [(1, 2.5), (2, 2.0)]

    off = MetricsLogger(tmp_path / "rank1", enabled=False)
    off.log(1, {"loss/total": 1.0})
    off.close()
    assert not (tmp_path / "rank1").exists()


def test_flop_counter_on_the_tiny_thinker(tiny_backbone_dir):
    from affectverse_ds.model.backbone import load_thinker
    from affectverse_ds.train.logging import FlopCounter

    cfg = load_config(REPO / "launch/configs/tiny.yaml", [f"backbone.path={tiny_backbone_dir}"])
    thinker = load_thinker(cfg.backbone)
    counter = FlopCounter.from_model(thinker, n_trainable=1000)
    inner = thinker.model
    total = sum(p.numel() for p in thinker.parameters())
    embed = inner.language_model.embed_tokens.weight.numel()
    head = 0 if thinker.config.text_config.tie_word_embeddings else thinker.lm_head.weight.numel()
    # every parameter is in exactly one of: LM body, embedding, audio tower, vision tower, LM head
    assert counter.n_lm + embed + counter.n_audio + counter.n_vision + head == total
    assert min(counter.n_lm, counter.n_audio, counter.n_vision) > 0
    flops = counter.step_flops(tokens=100, audio_frames=30, video_patches=64)
    assert flops == 6 * counter.n_lm * 100 + 2 * counter.n_audio * 30 + 2 * counter.n_vision * 64 + 6 * 1000 * 100
    assert counter.step_flops(200, 60, 128) == 2 * flops  # linear in the work of the step
