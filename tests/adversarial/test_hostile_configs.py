"""Hostile YAML (issue #26) through the one reader configs and checkpoints' ``export/config.yaml`` share:
every kind in ``corpus.CONFIG_KINDS`` is a one-line ConfigError naming the file (or the key, for a value that
parses but is not finite), nothing in it runs, and the memory attacks stay within 100 MB of an ordinary config.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from affectverse_ds.config import ConfigError, dump_config, load_config

from tests.support import corpus
from tests.support.wheels import write_tiny_wheels
from tests.support.peak_memory import peaks
from tests.support.launch import launch_module

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny.yaml"
# kinds that parse as YAML but hold a value the config refuses: the message names the key, not the file
KEY_KINDS = {"non_finite_lr": "train.lr", "non_finite_lambda": "ewm.lambda_img", "nan_grad_clip": "train.grad_clip",
             "overflow_float": "train.lr", "numeric_keys": "1: unknown key"}
MEMORY_KINDS = ["alias_bomb", "merge_bomb", "deep_100k", "oversize"]
MEMORY_MARGIN_MB = 100


def _one_line_error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize("kind", list(corpus.CONFIG_KINDS))
def test_every_hostile_config_is_one_line_naming_the_file(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tag attack would write PWNED here
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(corpus.CONFIG_KINDS[kind][1])
    message = _one_line_error(path)
    assert (KEY_KINDS[kind] if kind in KEY_KINDS else str(path)) in message
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("override, key", [("train.lr=.inf", "train.lr"), ("ewm.lambda_img=.inf", "ewm.lambda_img"),
                                           ("train.grad_clip=.nan", "train.grad_clip"),
                                           ("eval.keep_ratios=[.nan]", "eval.keep_ratios[0]"),
                                           ("data.train_benchmarks={meld: .inf}", "data.train_benchmarks.meld"),
                                           ("train.out_dir=!!python/name:os.system", "override train.out_dir")])
def test_hostile_overrides_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(TINY, [override])
    assert str(err.value).startswith(f"{key}:") and "\n" not in str(err.value)


def test_anchors_and_merge_keys_within_bounds_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("train:\n  <<: {micro_batch: 2, grad_accum: 3}\n  lr: &rate 1.0e-3\newm:\n  lambda_img: *rate\n")
    cfg = load_config(path)
    assert (cfg.train.micro_batch, cfg.train.grad_accum, cfg.train.lr, cfg.ewm.lambda_img) == (2, 3, 1e-3, 1e-3)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_fifo_config_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    code = ("from affectverse_ds.config import load_config, ConfigError\n"
            f"try:\n    load_config({str(fifo)!r})\nexcept ConfigError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{fifo}: refused: a FIFO, not a regular file"


# ----------------------------------------------------------------------------- a shared checkpoint's config


@pytest.mark.parametrize("kind", ["alias_bomb", "python_object_tag", "deep_100k", "not_utf8"])
def test_hostile_checkpoint_config_is_one_line_naming_it(kind, tmp_path, monkeypatch):
    from affectverse_ds.model.export import model_config

    monkeypatch.chdir(tmp_path)
    export = tmp_path / "step_000001" / "export"
    export.mkdir(parents=True)
    (export / "config.yaml").write_bytes(corpus.CONFIG_KINDS[kind][1])
    with pytest.raises(ConfigError) as err:
        model_config(load_config(TINY), export)
    assert str(export / "config.yaml") in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "PWNED").exists()


def test_evaluator_refuses_a_checkpoint_whose_config_is_a_bomb(tmp_path, tiny_backbone_dir, capsys):
    """The attack as a user meets it: ``launch/evaluate.py`` pointed at a shared checkpoint."""
    from tests.support.evaluation import make_checkpoint, tiny_eval_config

    shards = tmp_path / "shards"
    corpus.write_corpus_shards(shards, split="test", n_good=2, kinds=[])
    write_tiny_wheels(tmp_path / "reference" / "emotion_wheel")
    cfg = tiny_eval_config(tiny_backbone_dir, shards, tmp_path / "reference")
    ckpt = make_checkpoint(cfg, tmp_path / "ckpt" / "step_000001", 1)
    (ckpt / "export" / "config.yaml").write_bytes(corpus.CONFIG_KINDS["alias_bomb"][1])
    launch = launch_module("evaluate")
    capsys.readouterr()  # the checkpoint maker's own progress bars
    rc = launch.main(["--config", str(dump_config(cfg, tmp_path / "eval.yaml")), "--benchmarks", "meld",
                      "--mode", "rank", "--out", str(tmp_path / "results"), "--no-probe",
                      "--checkpoint", str(ckpt / "export")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "aliases expand" in lines[0], lines
    assert str(ckpt / "export" / "config.yaml") in lines[0]


# ----------------------------------------------------------------------------- peak memory


# One process per reader (tests/support/peak_memory.py): ordinary input first, then each attack.
_MEASURE = """
from affectverse_ds.config import ConfigError, load_config
if WHERE == "checkpoint":
    from affectverse_ds.model.export import model_config
    base = load_config(TINY)
    read = lambda p: model_config(base, p)
else:
    read = load_config

def measure(path):
    try:
        read(path)
        return "loaded"
    except ConfigError as err:
        return str(err)
"""


@pytest.mark.parametrize("where", ["config", "checkpoint"])
def test_memory_attacks_stay_within_100_mb_of_an_ordinary_config(where, tmp_path, capsys):
    """Peak RSS after each attack against the peak after loading tiny.yaml the same way, in one process."""
    paths = []
    for name, content in [("ordinary", TINY.read_bytes())] + [(k, corpus.CONFIG_KINDS[k][1]) for k in MEMORY_KINDS]:
        folder = tmp_path / name / "export"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_bytes(content)
        paths.append(str(folder if where == "checkpoint" else folder / "config.yaml"))
    ordinary, *attacks = peaks(f"WHERE, TINY = {where!r}, {str(TINY)!r}\n" + _MEASURE, paths)
    assert ordinary.outcome == "loaded"
    report = [f"{where}: ordinary {ordinary.peak_mb:.0f} MB"]
    for kind, row in zip(MEMORY_KINDS, attacks):
        assert row.outcome != "loaded" and "\n" not in row.outcome
        assert row.peak_mb - ordinary.peak_mb < MEMORY_MARGIN_MB, (kind, row, ordinary)
        report.append(f"{kind} {row.peak_mb:.0f} MB")
    with capsys.disabled():
        print("\npeak RSS " + ", ".join(report))
