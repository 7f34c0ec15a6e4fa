"""The non-finite policy (``affectverse_ds/train/nonfinite.py``) through the real DeepSpeed engine, one process:
a NaN step is skipped (weights untouched, the LR keeps its place) and counted; N in a row stop the run unsaved;
weights that are not finite never reach a COMPLETE checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.support import training as loop_tests
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
DS = REPO / "ds_configs" / "zero2.json"


def _trainer(backbone, shards, out, *extra):
    from affectverse_ds.train.loop import Trainer

    cfg = loop_tests.loop_config(backbone, shards, out, "train.epochs=1", "train.micro_batch=2",
                                 "train.grad_accum=1", *extra)
    return Trainer(cfg, DS)


def _poison(trainer, bad_micro_batches) -> None:
    """The model's loss becomes NaN (its gradient too) on the given micro-batches (1-based)."""
    forward, calls = trainer.model.forward, []

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) in bad_micro_batches:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.forward = poisoned


def _record_weights(trainer) -> list[dict[str, torch.Tensor]]:
    """The trainable weights after every optimizer step, in order."""
    states, after = [], trainer._after_step

    def after_step(*args):
        states.append(loop_tests.trainable_state(trainer))
        return after(*args)

    trainer._after_step = after_step
    return states


def test_a_nan_step_is_skipped_counted_and_the_lr_keeps_its_place(single_process, tiny_backbone_dir,
                                                                  two_benchmark_shards, tmp_path):
    clean = _trainer(tiny_backbone_dir, two_benchmark_shards, tmp_path / "clean")
    clean_result = clean.train()
    trainer = _trainer(tiny_backbone_dir, two_benchmark_shards, tmp_path / "nan")
    _poison(trainer, {3})
    weights = _record_weights(trainer)
    result = trainer.train()
    assert result.finished and result.steps == clean_result.steps and result.skipped_steps == 1
    assert all(torch.equal(weights[1][n], weights[2][n]) for n in weights[1])  # step 3 changed nothing
    assert not all(torch.equal(weights[2][n], weights[3][n]) for n in weights[2])  # step 4 trained again
    logged = loop_tests.metrics(tmp_path / "nan")
    assert [m["train/skipped_steps"] for m in logged] == [0, 0, 1, 1, 1, 1][:len(logged)]
    assert math.isnan(logged[2]["loss/total"])
    assert [m["lr"] for m in logged] == [m["lr"] for m in loop_tests.metrics(tmp_path / "clean")]
    assert all(torch.isfinite(p).all() for _, p in trainer.model.trainable_parameters())
    assert (result.last_checkpoint / "COMPLETE").is_file()


def test_nan_steps_in_a_row_stop_the_run_without_saving(single_process, tiny_backbone_dir, two_benchmark_shards,
                                                        tmp_path):
    trainer = _trainer(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", "train.save_every=1",
                       "train.keep_last=5",
                       "train.max_nonfinite_steps=2")
    _poison(trainer, set(range(2, 100)))
    result = trainer.train()
    assert (result.stop_reason, result.steps, result.skipped_steps) == ("nonfinite", 3, 2)
    assert result.message.startswith("step 3: 2 optimizer steps in a row had a non-finite loss")
    assert "\n" not in result.message
    done = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if (p / "COMPLETE").is_file())
    assert done == ["step_000001", "step_000002"]  # step 2 was skipped: its weights are step 1's, finite


def test_weights_that_are_not_finite_are_never_saved(single_process, tiny_backbone_dir, two_benchmark_shards,
                                                     tmp_path):
    """A finite gradient with a huge step can still overflow the weights; the save refuses them."""
    trainer = _trainer(tiny_backbone_dir, two_benchmark_shards, tmp_path / "run", "train.save_every=2")
    step, calls = trainer._micro_step, []

    def micro_step(batch, acc):
        step(batch, acc)
        calls.append(1)
        if len(calls) == 2:  # after step 2's update, before its save
            name, p = next(iter(trainer.model.trainable_parameters()))
            p.data.view(-1)[0] = float("inf")

    trainer._micro_step = micro_step
    result = trainer.train()
    assert (result.stop_reason, result.steps, result.last_checkpoint) == ("nonfinite", 2, None)
    assert result.message.startswith("step 2: trainable weights are not finite")
    assert not list((tmp_path / "run" / "checkpoints").glob("*/COMPLETE"))


def test_launch_exits_with_one_line_when_the_run_diverges(single_process, tiny_backbone_dir, two_benchmark_shards,
                                                          tmp_path, capsys, monkeypatch):
    from affectverse_ds.train import loop

    launch = launch_module("train")
    built = loop.Trainer.__init__

    def init(self, *args, **kwargs):
        built(self, *args, **kwargs)
        _poison(self, set(range(1, 100)))

    monkeypatch.setattr(loop.Trainer, "__init__", init)
    rc = launch.main(["--ds", str(DS), "--config", str(REPO / "launch/configs/tiny.yaml"),
                      f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={two_benchmark_shards}",
                      f"train.out_dir={tmp_path / 'run'}", "data.num_workers=0", "train.micro_batch=2",
                      "train.grad_accum=1", "train.epochs=1", "train.max_nonfinite_steps=2"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 4 and errors == [errors[0]] and "2 optimizer steps in a row" in errors[0]
    assert json.loads((tmp_path / "run" / "final_state.json").read_text())["step"] == 2
