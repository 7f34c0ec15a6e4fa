"""Resume with a changed config (issue #26): an unnamed change that would not apply is refused in one line, a
named one applies from the resumed step and is recorded, a shape change is refused before DeepSpeed loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectverse_ds.config import load_config, to_dict
from affectverse_ds.train import config_change as cc
from tests.support import training as loop_tests

REPO = Path(__file__).resolve().parents[2]
DS = REPO / "ds_configs" / "zero2.json"


def _tree(*overrides: str) -> dict:
    return to_dict(load_config(REPO / "launch/configs/tiny.yaml", list(overrides)))


# ----------------------------------------------------------------------------- the decision (pure)


def test_unnamed_changes_are_refused_with_a_one_line_diff():
    with pytest.raises(cc.ConfigChangeError) as err:
        cc.check_before_load(_tree(), _tree("train.lr=2e-3", "train.grad_accum=4", "train.keep_last=9"), set())
    message = str(err.value)
    assert "\n" not in message and "train.grad_accum 1 -> 4, train.lr 0.001 -> 0.002" in message
    assert "keep_last" not in message and "--allow-change" in message


def test_named_changes_are_returned_and_bookkeeping_is_free():
    changes = cc.check_before_load(_tree(), _tree("train.lr=2e-3", "train.out_dir=x", "eval.batch_size=9"),
                                   {"train.lr"})
    assert changes == {"train.lr": (1e-3, 2e-3)}


def test_shape_changes_are_refused_even_when_named():
    with pytest.raises(cc.ConfigChangeError, match=r"ewm.d_w 64 -> 256 changes the shapes"):
        cc.check_before_load(_tree(), _tree("ewm.d_w=256"), {"ewm.d_w"})


def test_a_misspelt_allow_change_is_refused():
    with pytest.raises(cc.ConfigChangeError, match="--allow-change train.learning_rate: not a config key"):
        cc.check_before_load(_tree(), _tree(), {"train.learning_rate"})


def test_keys_an_older_checkpoint_does_not_record_are_not_compared():
    saved = _tree()
    del saved["train"]["max_nonfinite_steps"]
    assert cc.check_before_load(saved, _tree("train.max_nonfinite_steps=3"), set()) == {}


def test_batch_keys_apply_only_at_an_epoch_boundary():
    changes = {"train.grad_accum": (1, 4)}
    cc.check_position(changes, 0, 8)
    with pytest.raises(cc.ConfigChangeError, match="cannot apply mid-epoch"):
        cc.check_position(changes, 3, 5)


# ----------------------------------------------------------------------------- through the real engine


@pytest.fixture(scope="module")
def stopped(single_process, tiny_backbone_dir, two_benchmark_shards, tmp_path_factory):
    """A run stopped at step 2 of 6 (mid-epoch) and the uninterrupted reference, both at lr 1e-3."""
    root = tmp_path_factory.mktemp("resume_config")

    def cfg(out, *extra):
        return loop_tests.loop_config(tiny_backbone_dir, two_benchmark_shards, out, "train.epochs=1",
                                      "train.micro_batch=2", "train.grad_accum=1", *extra)

    reference = loop_tests.train(cfg(root / "reference"))
    loop_tests.train(cfg(root / "run", "train.stop_after_steps=2"))
    return cfg, root, loop_tests, reference


def _copy_run(root: Path, name: str) -> Path:
    import shutil

    return Path(shutil.copytree(root / "run", root / name))


def test_changed_lr_without_naming_it_is_refused(stopped):
    from affectverse_ds.train.checkpoint import CheckpointError
    from affectverse_ds.train.loop import Trainer

    cfg, root, _, _ = stopped
    out = _copy_run(root, "refused")
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg(out, "train.lr=2e-3"), DS, resume="auto")
    assert "train.lr 0.001 -> 0.002" in str(err.value) and "\n" not in str(err.value)
    assert not (out / cc.CHANGES_FILE).exists()


def test_a_named_lr_applies_from_the_resumed_step_and_is_recorded(stopped):
    cfg, root, loop_tests, reference = stopped
    out = _copy_run(root, "named")
    from affectverse_ds.train.loop import Trainer

    trainer = Trainer(cfg(out, "train.lr=2e-3"), DS, resume="auto", allow_change=("train.lr",))
    result = trainer.train()
    assert result.finished and result.steps == 6
    ours = {m["step"]: m for m in loop_tests.metrics(out)}
    theirs = {m["step"]: m for m in loop_tests.metrics(reference.trainer.out_dir)}
    for step in range(3, 7):  # the same schedule shape, from the new peak rate
        assert ours[step]["lr"] == pytest.approx(2 * theirs[step]["lr"], rel=1e-6), step
    assert ours[4]["loss/total"] != pytest.approx(theirs[4]["loss/total"], rel=1e-6)  # the change did something
    record = [json.loads(line) for line in (out / cc.CHANGES_FILE).read_text().splitlines()]
    assert record[0]["step"] == 2 and record[0]["changes"] == {"train.lr": {"from": 1e-3, "to": 2e-3}}
    assert load_config(out / "config.yaml").train.lr == 2e-3  # what the run records is what it did


def test_a_shape_change_is_one_line_before_deepspeed_loads(stopped):
    from affectverse_ds.train.checkpoint import CheckpointError
    from affectverse_ds.train.loop import Trainer

    cfg, root, _, _ = stopped
    with pytest.raises(CheckpointError) as err:
        Trainer(cfg(_copy_run(root, "shape"), "ewm.d_w=32", "ewm.heads=2"), DS, resume="auto",
                allow_change=("ewm.d_w", "ewm.heads"))
    assert "ewm.d_w 64 -> 32, ewm.heads" in str(err.value) and "size mismatch" not in str(err.value)


def test_a_named_batch_change_mid_epoch_is_refused(stopped):
    from affectverse_ds.train.checkpoint import CheckpointError
    from affectverse_ds.train.loop import Trainer

    cfg, root, _, _ = stopped
    with pytest.raises(CheckpointError, match="cannot apply mid-epoch"):
        Trainer(cfg(_copy_run(root, "batch"), "train.grad_accum=2"), DS, resume="auto",
                allow_change=("train.grad_accum",))
