"""Config tree: defaults <- YAML <- overrides, validation errors name the key, round trip through the run dir."""
from __future__ import annotations

from pathlib import Path

import pytest

from affectverse_ds.chat import SYSTEM_PROMPT
from affectverse_ds.config import (
    AffectVerseConfig, ConfigError, check_world, dump_config, from_dict, load_config, to_dict,
)

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted((REPO / "launch" / "configs").glob("*.yaml"))


def test_defaults_are_the_papers_hyperparameters():
    cfg = AffectVerseConfig()
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert (cfg.ewm.d_w, cfg.ewm.n_future, cfg.ewm.rollout_steps, cfg.ewm.layers, cfg.ewm.heads) == (512, 8, 3, 2, 8)
    assert (cfg.ewm.n_belief_base, cfg.ewm.n_types, cfg.ewm.modality_dropout, cfg.ewm.alpha_init) == (4, 6, 0.15, 0.1)
    assert (cfg.ewm.kappa_min, cfg.ewm.lambda_img, cfg.data.max_seq_len, cfg.data.fps) == (0.7, 1.0, 1024, 3.0)


def test_7b_preset_matches_paper():
    cfg = load_config(REPO / "launch/configs/affectverse_7b.yaml")
    assert cfg.train.lr == 2e-4 and cfg.train.weight_decay == 0.01 and cfg.train.warmup_ratio == 0.03
    assert (cfg.train.micro_batch, cfg.train.grad_accum, cfg.train.global_batch, cfg.train.epochs) == (4, 8, 256, 3)
    assert SYSTEM_PROMPT == "You are an emotion recognition assistant"  # (paper) the prompt the chat template uses
    assert check_world(cfg.train, world_size=8) == 256
    with pytest.raises(ConfigError, match="train.global_batch"):
        check_world(cfg.train, world_size=2)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_start_with_their_command(preset):
    load_config(preset)
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# ") and ("train.py" in first or "python" in first), first


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-4\n  epochs: 2\newm:\n  context: self\n")
    cfg = load_config(path, ["train.lr=1e-5", "data.train_benchmarks={meld: 2}"])
    assert cfg.train.lr == 1e-5 and cfg.train.epochs == 2 and cfg.ewm.context == "self"
    assert cfg.data.train_benchmarks == {"meld": 2.0}


def test_round_trip_through_run_dir(tmp_path):
    cfg = load_config(REPO / "launch/configs/tiny.yaml", ["ewm.rollout_steps=5"])
    written = dump_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(written)
    assert to_dict(again) == to_dict(cfg)
    assert from_dict(to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, key", [
    ("train.lrr=1", "train.lrr"),
    ("nosection.x=1", "nosection"),
    ("train.lr=fast", "train.lr"),
    ("lora.r=true", "lora.r"),
    ("ewm.context=sideways", "ewm.context"),
    ("ewm.heads=3", "ewm.heads"),
    ("ewm.kappa_min=0", "ewm.kappa_min"),
    ("train.global_batch=7", "train.global_batch"),
    ("injection.positions=3", "injection.positions"),
    ("data.frame_size=100", "data.frame_size"),
    ("data.fps=0", "data.fps"),  # was reported as a data.frame_size error
    ("data.sample_rate=22050", "data.sample_rate"),  # the Whisper extractor takes 16 kHz: other rates miscount
    ("eval.modalities=[avt, xyz]", "eval.modalities"),
    ("lora.target_modules=q_proj", "lora.target_modules"),
    ("train=3", "train"),
    ("novalue", "novalue"),
])
def test_each_error_is_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message
    assert key in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_the_retired_reference_data_key_names_its_replacement(tmp_path):
    """``eval.reference_data`` (a folder holding emotion_wheel/) was an alias of ``eval.wheel_dir`` (issue 25): set,
    it is an error pointing at the key to use; empty, as every config dumped before held it, it is dropped."""
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"eval.reference_data={tmp_path}"])
    assert str(err.value).startswith("eval.reference_data: no longer read; set eval.wheel_dir")
    old_dump = tmp_path / "config.yaml"
    old_dump.write_text("eval:\n  wheel_dir: ''\n  reference_data: ''\n  batch_size: 3\n")
    assert load_config(old_dump).eval.batch_size == 3
    assert "reference_data" not in to_dict(load_config(old_dump))["eval"]
