"""Launcher variables, the engine-policy JSON and batch-size filling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from affectverse_ds.config import ConfigError, load_config
from affectverse_ds.distributed import dist_info_from_env, first_slurm_host
from affectverse_ds.train.engine import fill_ds_config, load_ds_config

REPO = Path(__file__).resolve().parents[2]
DS_CONFIGS = sorted((REPO / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("node1,node2", "node1"), ("gpu[03-05,07]", "gpu03"),
    ("gpu[12,14],cpu1", "gpu12"), ("a-b-c[001-004]", "a-b-c001"),
])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


def test_dist_info_from_each_launcher():
    ds = dist_info_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (ds.rank, ds.world_size, ds.local_rank, ds.master_addr, ds.master_port) == (3, 8, 3, "h", 1)
    slurm = dist_info_from_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                                "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.master_addr, slurm.source) == \
        (9, 16, 1, "gpu07", "slurm")
    single = dist_info_from_env({})
    assert (single.rank, single.world_size, single.source) == (0, 1, "single")


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_shipped_ds_configs_are_policy_only(path):
    ds = load_ds_config(path)
    assert "bf16" not in ds and "gradient_clipping" not in ds  # the AffectVerse config's (train.precision, grad_clip)
    assert ds["zero_optimization"]["contiguous_gradients"] is True
    raw = json.loads(path.read_text())
    raw.pop("_comment")
    assert '"auto"' not in json.dumps(raw)


def test_auto_and_batch_keys_are_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": "auto"}}))
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage.*auto"):
        load_ds_config(bad)
    bad.write_text(json.dumps({"train_batch_size": 32}))
    with pytest.raises(ConfigError, match="train_batch_size"):
        load_ds_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_ds_config(tmp_path / "absent.json")


def test_batch_fields_filled_and_checked():
    cfg = load_config(REPO / "launch/configs/affectverse_7b.yaml")
    ds = fill_ds_config(load_ds_config(REPO / "ds_configs/zero2.json"), cfg, world_size=8)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (4, 8, 256)
    assert ds["optimizer"]["params"]["torch_adam"] is True and ds["optimizer"]["params"]["lr"] == 2e-4
    with pytest.raises(ConfigError, match="world size 4"):
        fill_ds_config(ds, cfg, world_size=4)
    fp32 = load_config(REPO / "launch/configs/tiny.yaml")
    assert fill_ds_config(load_ds_config(REPO / "ds_configs/zero2.json"), fp32, 2)["bf16"]["enabled"] is False
    assert ds["bf16"]["enabled"] is True and ds["gradient_clipping"] == cfg.train.grad_clip


@pytest.mark.parametrize("key, owner", [("bf16", "train.precision"), ("fp16", "train.precision"),
                                        ("gradient_clipping", "train.grad_clip"), ("scheduler", "train.warmup_ratio")])
def test_a_key_the_config_owns_is_an_error_naming_its_owner(tmp_path, key, owner):
    """Editing bf16 or gradient_clipping in the JSON used to do nothing (overwritten from the config, silently)."""
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({key: {"enabled": True} if key in ("bf16", "fp16") else 1.0}))
    with pytest.raises(ConfigError, match=rf"{key} is set by the AffectVerse config \({owner}"):
        load_ds_config(bad)
