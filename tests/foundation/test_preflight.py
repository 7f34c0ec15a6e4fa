"""Preflight: every check passes on good input and names the problem and its fix on bad input, in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from affectverse_ds import preflight
from affectverse_ds.config import load_config
from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"


def one_line(line: str | None, *words: str) -> None:
    assert line is not None and "\n" not in line
    for word in words:
        assert word in line, (word, line)


def _launcher(name: str):
    return launch_module(name)


def test_backbone(tiny_backbone_dir, tmp_path):
    assert preflight.backbone(tiny_backbone_dir) is None
    one_line(preflight.backbone(tmp_path / "nope"), "does not exist", "huggingface-cli download", "make_tiny_backbone")
    partial = tmp_path / "partial"
    partial.mkdir()
    one_line(preflight.backbone(partial), "no config.json")
    shutil.copy(tiny_backbone_dir / "config.json", partial)
    one_line(preflight.backbone(partial), "no tokenizer")
    shutil.copy(tiny_backbone_dir / "tokenizer.json", partial)
    one_line(preflight.backbone(partial), "no weights")
    assert preflight.backbone(partial, weights=False) is None


def _shard_folder(root: Path, names: dict[str, int]) -> Path:
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_bytes(b"")
    (root / "sizes.json").write_text(json.dumps(names))
    return root


def test_shards(tmp_path):
    good = _shard_folder(tmp_path / "s", {"meld-train-000000.tar": 4, "meld-test-000000.tar": 2})
    assert preflight.shards(good, {"meld": ("train", "test")}) is None
    one_line(preflight.shards(tmp_path / "absent", {"meld": ("train",)}), "missing or empty", "build_shards")
    one_line(preflight.shards(good, {"meld": ("train",), "cmumosi": ("train",)}),
             "cmumosi-train-*.tar matches nothing", "data.train_benchmarks")
    (good / "sizes.json").unlink()
    one_line(preflight.shards(good, {"meld": ("train",)}), "sizes.json")


def test_wheels(tmp_path):
    assert preflight.wheels(PACKAGED_WHEEL_DIR) is None
    broken = tmp_path / "wheels"
    shutil.copytree(PACKAGED_WHEEL_DIR, broken)
    (broken / "wheel3.xlsx").unlink()
    one_line(preflight.wheels(broken), "wheel3.xlsx", "eval.wheel_dir")
    (broken / "wheel3.xlsx").write_bytes(b"not a workbook")
    one_line(preflight.wheels(broken), "not readable", "--wheel-dir")


def test_writable_and_free_disk(tmp_path):
    assert preflight.writable(tmp_path / "a" / "b") is None and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "file").write_text("x")
    one_line(preflight.writable(tmp_path / "file" / "out"), "not writable", "choose another folder")
    assert preflight.free_disk(tmp_path / "new" / "folder", 1, "this") is None
    one_line(preflight.free_disk(tmp_path / "new", 1 << 60, "the thing"), "GiB free", "the thing needs", "free disk")


def test_world_size():
    cfg = load_config(TINY, ["train.global_batch=8", "train.micro_batch=2", "train.grad_accum=2"])
    assert preflight.world_size(cfg.train, 2) is None
    one_line(preflight.world_size(cfg.train, 3), "world size 3", "launch 2 ranks")


def test_training_bundle_reports_every_problem_at_once(tmp_path):
    cfg = load_config(TINY, [f"backbone.path={tmp_path / 'bb'}", f"data.shard_dir={tmp_path / 'shards'}",
                             f"train.out_dir={tmp_path / 'run'}", "train.global_batch=4"])
    with pytest.raises(preflight.PreflightError) as err:
        preflight.for_training(cfg, world=1)
    assert len(err.value.lines) == 3  # backbone, shards, world size; the out folder is fine
    assert all(line.startswith("preflight: ") for line in str(err.value).splitlines())


def test_train_and_evaluate_commands_stop_before_building_anything(tmp_path, capsys):
    args = [f"backbone.path={tmp_path / 'bb'}", f"data.shard_dir={tmp_path / 'shards'}", f"train.out_dir={tmp_path / 'run'}"]
    assert _launcher("train").main(["--ds", str(REPO / "ds_configs" / "zero2.json"), "--config", str(TINY), *args]) == 2
    err = capsys.readouterr().err
    assert "preflight: backbone folder" in err and "preflight: shard folder" in err and "missing or empty" in err
    assert not (tmp_path / "run" / "config.yaml").exists()  # the trainer never started
    assert _launcher("evaluate").main(["--config", str(TINY), "--checkpoint", str(tmp_path / "ckpt"),
                                       "--out", str(tmp_path / "res"), *args]) == 2
    assert "checkpoint folder(s) not found" in capsys.readouterr().err


def test_shard_builder_command(tmp_path, capsys):
    from data_prep import build_shards

    with pytest.raises(SystemExit) as stop:
        build_shards.main(["--benchmark", "meld", "--layout", "unibench", "--root", str(tmp_path / "raw"),
                           "--split", "test", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    one_line(capsys.readouterr().err.strip(), "benchmark root", "missing or empty")


def test_demo_checks_every_stage_before_the_first(tmp_path):
    from affectverse_ds import demo

    runs, art = tmp_path / "runs", tmp_path / "art"
    preflight.require(demo.demo_checks(runs, art, PACKAGED_WHEEL_DIR))
    with pytest.raises(preflight.PreflightError) as err:
        preflight.require(demo.demo_checks(runs, art, tmp_path / "no_wheels"))
    assert len(err.value.lines) == 1 and "emotion wheels" in err.value.lines[0]


def test_ensure_tiny_backbone_writes_an_absent_one_and_never_touches_another_model(tmp_path):
    other = tmp_path / "qwen7b"
    other.mkdir()
    (other / "config.json").write_text("{}")
    preflight.ensure_tiny_backbone(other)
    assert [p.name for p in other.iterdir()] == ["config.json"]
    fresh = preflight.ensure_tiny_backbone(tmp_path / "artifacts" / "tiny_backbone")  # absent: written
    assert preflight.backbone(fresh) is None
