"""Checkpoint damage and failed saves are one line (issue #26, round 2): a 100 000-deep ``INTEGRITY.json`` is
damage like any other (resume falls back past it), ``checkpoints`` being a file is refused before the first
step, and a save that runs out of disk says "no space", leaves no COMPLETE marker and prunes nothing."""
from __future__ import annotations

import errno
from collections import namedtuple
from pathlib import Path

import pytest

from affectverse_ds import preflight
from affectverse_ds.config import load_config
from affectverse_ds.train import checkpoint as ckpt
from affectverse_ds import distributed as dist

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
SINGLE = dist.DistInfo(0, 1, 0, "127.0.0.1", 0, "single")


def _complete(folder: Path, step: int) -> Path:
    """A checkpoint folder as save_checkpoint leaves it (one payload file, its integrity record, COMPLETE)."""
    path = folder / ckpt.step_tag(step)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"# step {step}\n")
    ckpt.write_integrity(path)
    (path / ckpt.COMPLETE).write_text(f"{step}\n")
    return path


def test_a_100k_deep_integrity_record_is_damage_and_resume_falls_back(tmp_path):
    older, newer = _complete(tmp_path, 1), _complete(tmp_path, 2)
    (newer / ckpt.INTEGRITY).write_text("[" * 100_000 + "]" * 100_000)
    assert ckpt.verify_checkpoint(newer) == f"{ckpt.INTEGRITY} is unreadable (nested too deeply)"
    path, notes, error = ckpt.choose_resume(tmp_path, "auto")
    assert (path, error) == (older, None)
    assert notes == [f"resume auto: {newer.name} is damaged ({ckpt.INTEGRITY} is unreadable (nested too deeply)); "
                     f"falling back to the previous complete one"]
    assert newer.is_dir()  # damage is reported, never deleted


def test_checkpoints_being_a_file_is_refused_before_any_step(tmp_path, tiny_backbone_dir):
    from tests.support import corpus

    shards = corpus.write_corpus_shards(tmp_path / "shards", n_good=8, kinds=[], n_shards=2)
    cfg = load_config(TINY, [f"data.shard_dir={shards.folder}", f"backbone.path={tiny_backbone_dir}",
                             f"train.out_dir={tmp_path / 'run'}", "data.train_benchmarks={meld: 1.0}"])
    (tmp_path / "run").mkdir()
    blocker = tmp_path / "run" / "checkpoints"
    blocker.write_text("someone's notes\n")
    with pytest.raises(preflight.PreflightError) as err:
        preflight.for_training(cfg, world=1)
    assert err.value.lines == [f"{blocker} is a file, not a folder: no checkpoint could be saved there; move it "
                               f"away or set train.out_dir"]
    assert blocker.read_text() == "someone's notes\n"  # untouched


class _FullDiskEngine:
    """DeepSpeed's save_checkpoint as it fails on a full disk: the tag folder made, a write refused."""

    def __init__(self, error: Exception):
        self.error = error

    def save_checkpoint(self, save_dir, tag, **_):
        (Path(save_dir) / tag).mkdir(parents=True, exist_ok=True)
        raise self.error


@pytest.mark.parametrize("error, says", [
    (OSError(errno.ENOSPC, "No space left on device", "mp_rank_00_model_states.pt"),
     "no space left on the device (mp_rank_00_model_states.pt)"),
    # torch.save's zip writer reports a full disk as a RuntimeError; the file system's free space tells
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
     "no space left on the device (1 MiB free; RuntimeError: [enforce fail at inline_container.cc:672] . "
     "unexpected pos 704 vs 598)"),
])
def test_a_save_on_a_full_disk_says_no_space_and_loses_nothing(error, says, tmp_path, monkeypatch):
    cfg = load_config(TINY, [f"train.out_dir={tmp_path}", "train.keep_last=1"])
    older = _complete(tmp_path / "checkpoints", 1)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda _p: usage(10 << 30, (10 << 30) - (1 << 20), 1 << 20))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.save_checkpoint(_FullDiskEngine(error), None, cfg, 2, {}, SINGLE)
    new = tmp_path / "checkpoints" / "step_000002"
    assert str(err.value) == (f"checkpoint {new} not saved: {says}; it has no COMPLETE marker, so --resume auto "
                              f"takes the previous complete one")
    assert ckpt.complete_checkpoints(tmp_path / "checkpoints") == [older]  # keep_last=1 pruned nothing
    assert ckpt.verify_checkpoint(older) is None
    assert ckpt.choose_resume(tmp_path / "checkpoints", "auto")[0] == older


def test_a_failed_write_with_room_left_gives_its_own_cause(tmp_path):
    err = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert ckpt.save_failure(err, tmp_path / "checkpoints" / "step_000002") == (
        "RuntimeError: PytorchStreamWriter failed writing file data/0: file write failed")


def test_training_tears_its_process_group_down_before_exiting(monkeypatch, tmp_path):
    """Exiting under a live process group aborted 1 in ~58 finished 2-rank runs (exit 250): launch/train.py
    waits for every rank and destroys the group after train() returns, whatever the stop reason."""
    from tests.support.launch import launch_module

    from affectverse_ds.train import loop

    calls = []

    class _Trainer:
        def __init__(self, *a, **kw):
            calls.append("init")

        def train(self):
            calls.append("train")
            return loop.TrainResult(steps=1, stop_reason="end")

    launch = launch_module("train")
    monkeypatch.setattr(loop, "Trainer", _Trainer)
    monkeypatch.setattr(launch.preflight, "for_training", lambda cfg: None)
    monkeypatch.setattr(dist, "shutdown", lambda: calls.append("shutdown"))
    assert launch.main(["--ds", "ds_configs/zero2.json", "--config", str(TINY), f"train.out_dir={tmp_path}"]) == 0
    assert calls == ["init", "train", "shutdown"]


@pytest.mark.parametrize("saved, world", [(2, 1), (2, 4)])
def test_resume_on_another_world_size_is_one_line_naming_both(tmp_path, saved, world):
    """Pre-emptible clusters hand out other allocations: ZeRO's per-rank partitions do not reshard, and
    DeepSpeed failed deep inside with a ZeRORuntimeException; now one line with both sizes, nothing loaded."""
    step = tmp_path / "step_000002"
    step.mkdir()
    for rank in range(saved):
        (step / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"x")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.check_world_size(step, world)
    message = str(err.value)
    assert "\n" not in message and f"written by {saved} ranks, this run has {world}" in message
    ckpt.check_world_size(step, saved)  # the same world resumes
    ckpt.check_world_size(tmp_path, world)  # a folder with no partitions is not this check's to judge
