"""The planner's arithmetic, its parameter counts against the assembled model, and its CLI on the paper recipe."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from affectverse_ds import memory_plan as plan
from affectverse_ds.config import load_config

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "launch" / "configs" / "affectverse_7b.yaml"
COEFFS = {"bytes_per_token_per_layer": 1000.0, "bytes_per_token_per_layer_checkpointed": 100.0,
          "bytes_per_token_base": 500.0}


def test_memory_terms_follow_zero_partitioning():
    counts = plan.ParamCounts(frozen=1000, lm=800, audio=50, vision=50, lora=30, ewm=10, layers=4, largest_layer=200)
    z2 = plan.memory_plan(counts, COEFFS, world=4, micro=2, tokens=10, checkpointing=False, zero=2, reserve_gb=0)
    assert z2.weights == 2 * 1040  # bf16 frozen + trainable, replicated
    assert z2.gradients == 2 * 40 + 4 * 40 / 4  # bf16 grads, then the fp32 partition
    assert z2.optimizer == 12 * 40 / 4  # fp32 master + Adam m, v, partitioned
    assert z2.activations == 2 * 10 * (500 + 4 * 1000)
    z3 = plan.memory_plan(counts, COEFFS, world=4, micro=2, tokens=10, checkpointing=False, zero=3, reserve_gb=0)
    assert z3.weights == 2 * 1040 / 4 + 2 * 2 * 200 and z3.gradients == 2 * 40 / 4 + 4 * 40 / 4
    ckpt = plan.memory_plan(counts, COEFFS, world=4, micro=2, tokens=10, checkpointing=True, zero=2, reserve_gb=0)
    assert ckpt.activations == 2 * 10 * (500 + 4 * 100 + 1000)  # one layer recomputed at a time
    assert z2.peak == z2.weights + z2.gradients + z2.optimizer + z2.activations


def test_largest_micro_batch_is_the_edge_of_the_budget():
    counts = plan.ParamCounts(frozen=10**6, lm=0, audio=0, vision=0, lora=0, ewm=0, layers=1, largest_layer=1)
    coeffs = dict(COEFFS, bytes_per_token_base=0.0)
    one = plan.memory_plan(counts, coeffs, 1, 1, 100, False, 2, reserve_gb=0).peak
    per_sample = 100 * 1000
    budget = one + 4 * per_sample + 1
    assert plan.largest_micro_batch(counts, coeffs, 1, 100, False, 2, budget, reserve_gb=0) == 5
    assert plan.largest_micro_batch(counts, coeffs, 1, 100, False, 2, one - 1, reserve_gb=0) == 0


def test_parameter_counts_match_the_assembled_model(tiny_backbone_dir):
    """Counted on the meta device == what build_model really trains (LoRA on the LM only, every EWM weight)."""
    from affectverse_ds.model.affect_model import build_model

    cfg = load_config(REPO / "launch" / "configs" / "tiny.yaml",
                      [f"backbone.path={tiny_backbone_dir}", f"backbone.arch_config={tiny_backbone_dir}"])
    counts = plan.count_parameters(cfg)
    model = build_model(cfg)
    trainable = model.trainable_parameters()
    assert counts.lora == sum(p.numel() for n, p in trainable if "lora_" in n)
    assert counts.ewm == sum(p.numel() for n, p in trainable if n.startswith("ewm."))
    assert counts.frozen == sum(p.numel() for n, p in model.thinker.named_parameters() if "lora_" not in n)


def test_paper_recipe_plan_prints_and_fits_8x80(capsys):
    assert plan.main(["--config", str(PRESET), "--gpus", "8", "--gpu-memory-gb", "80"]) == 0
    out = capsys.readouterr().out
    assert "frozen 8.9" in out and "decoder layers 28" in out  # the 7B thinker incl. towers
    assert "fits; largest micro batch that fits:" in out and "ZeRO-3" in out
    assert "tokens (upper bound)" in out and "PFLOP" in out


def test_too_small_gpu_will_not_fit_and_names_the_largest_micro_batch(capsys):
    assert plan.main(["--config", str(PRESET), "--gpus", "8", "--gpu-memory-gb", "24", "train.micro_batch=16"]) == 0
    out = capsys.readouterr().out
    assert "WILL NOT FIT" in out
    line = next(x for x in out.splitlines() if "largest micro batch that fits" in x)
    assert int(line.rsplit(":", 1)[1]) < 16
    assert "gradient_checkpointing=true the largest micro batch would be" in out


def test_steps_per_epoch_from_the_shard_index(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    sizes = {f"meld-train-{i:06d}.tar": 128 for i in range(8)}  # one shard per rank (the loader's minimum)
    for name in sizes:  # the loader checks each shard's first tar header at start; the planner reads no sample
        with tarfile.open(shards / name, "w") as tar:
            info = tarfile.TarInfo("x.json")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    (shards / "sizes.json").write_text(json.dumps(sizes))
    assert plan.main(["--config", str(PRESET), "--gpus", "8", "--gpu-memory-gb", "80", f"data.shard_dir={shards}",
                      "data.train_benchmarks={meld: 1.0}", "data.num_workers=1"]) == 0
    out = capsys.readouterr().out
    # 1024 samples / (4 x 8 ranks) = 32 micro-batches per rank, / accum 8 = 4 optimizer steps; 3 epochs
    assert "steps per epoch: 4 (32 micro-batches per rank" in out and "12 steps in all" in out


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        plan.main(["--config", str(PRESET), "--gpus", "8"])  # no --gpu-memory-gb
    assert plan.main(["--config", str(PRESET), "--gpus", "8", "--gpu-memory-gb", "80", "train.nope=1"]) == 2
    assert "error:" in capsys.readouterr().err


def test_the_reserve_holds_the_cuda_context_and_the_allocator_slack():
    counts = plan.ParamCounts(frozen=10**9, lm=0, audio=0, vision=0, lora=10**6, ewm=0, layers=2, largest_layer=1)
    bare = plan.memory_plan(counts, COEFFS, 1, 2, 100, False, 2, reserve_gb=0)
    full = plan.memory_plan(counts, COEFFS, 1, 2, 100, False, 2)
    assert bare.reserve == 0 and bare.peak == bare.weights + bare.gradients + bare.optimizer + bare.activations
    assert full.reserve == pytest.approx(plan.CUDA_CONTEXT_GB * plan.GIB + plan.ALLOCATOR_SLACK * bare.peak)
