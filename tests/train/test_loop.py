"""The training loop in one process (world size 1, no launcher), through the real DeepSpeed engine.

Two benchmarks mixed with weights ({meld: 1, cmumosi: 2}: 13 samples per epoch), whole epochs,
``save_every`` larger than the run, accumulation 1 and 3. Each run costs a few seconds, so the runs
are module fixtures shared by the assertions.

The expected-loss list (``expected_losses.json``) pins the first losses of the accumulation-3 recipe;
after a deliberate change on the loss path, regenerate it with
    AFFECTVERSE_REGENERATE_LOSSES=1 python -m pytest tests/train/test_loop.py -k expected_losses
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from tests.support.training import loop_config, metrics, train, trainable_state

REPO = Path(__file__).resolve().parents[2]
EXPECTED_LOSSES = Path(__file__).with_name("expected_losses.json")
PEAK_LR = 1e-3  # tiny.yaml


@pytest.fixture(scope="module")
def runs(single_process, tiny_backbone_dir, two_benchmark_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("loop")
    accum1 = train(loop_config(tiny_backbone_dir, two_benchmark_shards, out / "a1", "train.epochs=2",
                               "train.micro_batch=2", "train.grad_accum=1"))
    accum3 = train(loop_config(tiny_backbone_dir, two_benchmark_shards, out / "a3", "train.epochs=3",
                               "train.micro_batch=1", "train.grad_accum=3", "train.save_each_epoch=true",
                               "train.keep_last=2"))
    return {1: accum1, 3: accum3}


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("accum, micro, epochs, steps_per_epoch", [(1, 2, 2, 6), (3, 1, 3, 4)])
def test_run_length_comes_from_the_plan(runs, accum, micro, epochs, steps_per_epoch):
    run = runs[accum]
    plan = run.trainer.plan
    # 13 weighted samples: micro 2 -> 6 micro-batches; micro 1 -> 13, i.e. 4 windows of 3 and 1 left out
    assert (plan.samples_per_epoch, plan.steps_per_epoch) == (13, steps_per_epoch)
    assert plan.total_steps == steps_per_epoch * epochs
    assert plan.left_out_per_epoch == (13 // micro) % accum
    assert run.result.steps == plan.total_steps and run.result.stop_reason == "end" and run.result.finished
    assert run.micro_batches == plan.total_steps * accum  # whole windows only; the partial one is not read
    assert run.trainer.engine.global_steps == plan.total_steps  # DeepSpeed stepped the optimizer that often
    assert [m["step"] for m in metrics(run.trainer.out_dir)] == list(range(1, plan.total_steps + 1))
    assert run.trainer.position == {"step": plan.total_steps, "epoch": epochs, "micro_in_epoch": 0}


@pytest.mark.parametrize("accum", [1, 3])
def test_schedule_reaches_its_end(runs, accum):
    from transformers import get_cosine_schedule_with_warmup

    run = runs[accum]
    plan = run.trainer.plan
    assert run.trainer.scheduler.last_epoch == plan.total_steps  # stepped once per optimizer step, to the end
    assert run.trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=PEAK_LR),
                                                plan.warmup_steps, plan.total_steps)
    expected = []
    for _ in range(plan.total_steps):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    logged = [m["lr"] for m in metrics(run.trainer.out_dir)]  # the rate each step applied
    assert logged == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert plan.warmup_steps >= 1 and logged[0] == 0.0 and max(logged) == pytest.approx(PEAK_LR)
    assert logged[-1] < 0.15 * PEAK_LR  # the last step runs near the minimum (0 is reached after it)


@pytest.mark.parametrize("accum", [1, 3])
def test_last_step_saves_a_complete_checkpoint_whatever_save_every(runs, accum):
    run = runs[accum]
    total = run.trainer.plan.total_steps
    ckpts = run.trainer.out_dir / "checkpoints"
    last = ckpts / f"step_{total:06d}"
    assert run.result.last_checkpoint == last and (last / "COMPLETE").read_text() == f"{total}\n"
    assert (last / "export" / "lora" / "adapter_config.json").is_file()
    assert (last / "export" / "ewm.safetensors").is_file() and (last / "export" / "config.yaml").is_file()
    state = torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)
    assert state["step"] == total and state["epoch"] == run.trainer.position["epoch"]
    saved = sorted(p.name for p in ckpts.glob("step_*"))
    if accum == 1:  # save_every 1000, keep_last 1: the end of the run only
        assert saved == [f"step_{total:06d}"]
    else:  # save_each_epoch at steps 4, 8, 12; keep_last 2
        assert saved == ["step_000008", "step_000012"]


def test_final_weights_recorded_and_trained(runs):
    run = runs[3]
    record = json.loads((run.trainer.out_dir / "final_state.json").read_text())
    assert record["step"] == 12 and len(record["trainable_sha256_per_rank"]) == 1
    lora_b = [p for n, p in run.trainer.model.trainable_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # moved away from LoRA's zero init


# ----------------------------------------------------------------------------- save -> load -> continue


def test_stop_then_resume_equals_the_uninterrupted_run(runs, tiny_backbone_dir, two_benchmark_shards, tmp_path):
    """Stopped mid-epoch by train.stop_after_steps (step 5 of 12, epoch 1), resumed with --resume auto:
    the same losses and the same trainable weights as the uninterrupted accumulation-3 run."""
    reference = runs[3]
    args = ("train.epochs=3", "train.micro_batch=1", "train.grad_accum=3", "train.save_each_epoch=true",
            "train.keep_last=2")
    first = train(loop_config(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", *args,
                              "train.stop_after_steps=5"))
    assert (first.result.steps, first.result.stop_reason, first.result.finished) == (5, "stop_after_steps", False)
    assert first.result.last_checkpoint.name == "step_000005"
    saved_generator = torch.load(first.result.last_checkpoint / "mp_rank_00_model_states.pt",
                                 weights_only=True)["generators"]["0"]

    second_cfg = loop_config(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", *args)
    from affectverse_ds.train.loop import Trainer

    resumed_trainer = Trainer(second_cfg, REPO / "ds_configs/zero2.json", resume="auto")
    assert torch.equal(resumed_trainer.generator.get_state(), saved_generator)  # generator round trip
    assert resumed_trainer.position == {"step": 5, "epoch": 1, "micro_in_epoch": 3}
    result = resumed_trainer.train()
    assert (result.steps, result.stop_reason) == (12, "end")

    losses = {m["step"]: m["loss/total"] for m in metrics(tmp_path / "run")}
    expected = {m["step"]: m["loss/total"] for m in metrics(reference.trainer.out_dir)}
    assert sorted(losses) == list(range(1, 13))
    for step in range(1, 13):
        assert losses[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    ours, theirs = trainable_state(resumed_trainer), trainable_state(reference.trainer)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_an_epoch_end_checkpoint(runs, tiny_backbone_dir, two_benchmark_shards, tmp_path):
    """The save_each_epoch checkpoint at step 8 (end of epoch 2) continues into epoch 3 exactly."""
    reference = runs[3]
    ckpt = reference.trainer.out_dir / "checkpoints" / "step_000008"
    cfg = loop_config(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", "train.epochs=3",
                      "train.micro_batch=1", "train.grad_accum=3")
    run = train(cfg, resume=str(ckpt))
    assert run.micro_batches == 4 * 3 and run.result.steps == 12
    losses = [m["loss/total"] for m in metrics(tmp_path / "run")]
    expected = [m["loss/total"] for m in metrics(reference.trainer.out_dir)][8:]
    assert losses == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- expected losses


def test_expected_losses(runs):
    """The first 10 losses of the accumulation-3 recipe at seed 42 (tiny backbone seed 0), to 1e-4."""
    losses = [m["loss/total"] for m in metrics(runs[3].trainer.out_dir)][:10]
    assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
    if os.environ.get("AFFECTVERSE_REGENERATE_LOSSES") == "1":
        EXPECTED_LOSSES.write_text(json.dumps({"recipe": "tests/train/test_loop.py runs[3]", "losses": losses},
                                              indent=1) + "\n")
        pytest.skip(f"regenerated {EXPECTED_LOSSES}; review and commit it")
    expected = json.loads(EXPECTED_LOSSES.read_text())["losses"]
    assert losses == pytest.approx(expected, rel=1e-4, abs=1e-5)


# ----------------------------------------------------------------------------- what stopped the run


def test_a_signal_is_named_as_the_stop_reason(single_process, tiny_backbone_dir, two_benchmark_shards, tmp_path):
    """SIGUSR1 during step 2's micro-batches: the run saves step 2 and reports "signal", not the plan's end."""
    import signal

    from affectverse_ds.train.loop import Trainer

    cfg = loop_config(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", "train.epochs=1",
                      "train.micro_batch=1", "train.grad_accum=2")
    trainer = Trainer(cfg, REPO / "ds_configs/zero2.json")
    step, calls = trainer._micro_step, []

    def micro_step(batch, acc):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM's --signal=USR1 would, mid-step
        step(batch, acc)

    trainer._micro_step = micro_step
    before = signal.getsignal(signal.SIGUSR1)
    result = trainer.train()
    assert (result.steps, result.stop_reason, result.finished) == (2, "signal", False)
    assert result.last_checkpoint.name == "step_000002" and (result.last_checkpoint / "COMPLETE").is_file()
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is put back


def test_launch_says_what_stopped_the_run(single_process, tiny_backbone_dir, two_benchmark_shards, tmp_path, capsys):
    from tests.support.launch import launch_module

    launch = launch_module("train")
    args = ["--ds", str(REPO / "ds_configs/zero2.json"), "--config", str(REPO / "launch/configs/tiny.yaml"),
            f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={two_benchmark_shards}",
            f"train.out_dir={tmp_path / 'run'}", "data.train_benchmarks={meld: 1.0, cmumosi: 2.0}",
            "data.num_workers=0", "train.micro_batch=2", "train.grad_accum=1", "train.max_steps=0", "train.epochs=1",
            "train.stop_after_steps=2"]
    assert launch.main(args) == 0
    err = capsys.readouterr().err
    assert "stopped by train.stop_after_steps at step 2; resume with --resume auto" in err
    assert "signal" not in err
