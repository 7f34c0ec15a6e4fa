"""Resume reads nothing that can run code, and uses only checkpoints whose integrity record checks out.

Fast tests on the pure functions (weights-only loading, the integrity record, the resume decision) and one
in-process DeepSpeed save -> weights-only load in a child process (so this pytest process never holds a
process group). The 2-rank launcher checks are in ``test_resume_safety_launch.py`` (slow).
"""
from __future__ import annotations

import builtins
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from affectverse_ds.train import checkpoint as ckpt
from affectverse_ds.distributed import DistInfo

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: creates the marker file, i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def write_payload(path: Path, marker: Path) -> None:
    torch.save({"module": {"w": torch.zeros(2)}, "extra": _Payload(marker)}, path)


def fake_checkpoint(ckpt_dir: Path, step: int) -> Path:
    """A folder shaped like a saved checkpoint (tensors-only .pt files, an export), recorded and marked complete."""
    path = ckpt_dir / ckpt.step_tag(step)
    (path / "export" / "lora").mkdir(parents=True)
    torch.save({"module": {"lora_A": torch.full((2, 2), float(step))}, "step": step},
               path / "mp_rank_00_model_states.pt")
    torch.save({"torch": torch.get_rng_state()}, path / "rng_rank0.pt")
    (path / "export" / "lora" / "adapter_config.json").write_text("{}")
    (path / "config.yaml").write_text("train: {}\n")
    ckpt.write_integrity(path)
    (path / ckpt.COMPLETE).write_text(f"{step}\n")
    return path


# ---------------------------------------------------------------------------- weights-only loading

def test_a_pickled_payload_is_refused_in_one_line_and_never_runs(tmp_path):
    marker, bad = tmp_path / "MARKER", tmp_path / "mp_rank_00_model_states.pt"
    write_payload(bad, marker)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.safe_torch_load(bad)
    assert "io.open" in str(err.value) and "allow-list" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_the_deepspeed_checkpoint_engine_seam_loads_weights_only(tmp_path):
    """What DeepSpeed's ``load_checkpoint`` calls for every file: refuses the payload, loads plain tensors."""
    from affectverse_ds.train.engine import weights_only_checkpoint_engine

    engine = weights_only_checkpoint_engine()(None)
    marker, bad, good = tmp_path / "MARKER", tmp_path / "bad.pt", tmp_path / "good.pt"
    write_payload(bad, marker)
    with pytest.raises(ckpt.CheckpointError, match="io.open"):
        engine.load(str(bad), map_location="cpu")
    assert not marker.exists()
    torch.save({"a": torch.arange(3)}, good)
    assert torch.equal(engine.load(str(good), map_location="cpu")["a"], torch.arange(3))


def test_truncated_and_garbage_pt_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"a": torch.arange(1000)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 10)
    for path in (cut, junk):
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.safe_torch_load(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_universal_checkpoint_loading_is_refused_in_the_policy(tmp_path):
    from affectverse_ds.config import ConfigError
    from affectverse_ds.train.engine import load_ds_config

    policy = tmp_path / "ds.json"
    policy.write_text(json.dumps({"zero_optimization": {"stage": 2}, "checkpoint": {"load_universal": True}}))
    with pytest.raises(ConfigError, match="load_universal"):
        load_ds_config(policy)


_ROUND_TRIP = textwrap.dedent("""
    import os, sys, torch
    from affectverse_ds.distributed import free_port
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    from affectverse_ds.train import checkpoint as ckpt
    from affectverse_ds.train.engine import install_weights_only_loading
    from affectverse_ds.train.optim import build_scheduler

    stage, precision, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    def engine():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
              "bf16": {"enabled": precision == "bf16"}, "zero_optimization": {"stage": stage},
              "gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}}
        e, *_ = deepspeed.initialize(model=m, model_parameters=list(m.parameters()),
                                     lr_scheduler=build_scheduler(10, 0.1), config=ds)
        install_weights_only_loading(e)
        return e
    def step(e):
        x = torch.ones(1, 8, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        loss = e(x).float().pow(2).sum()
        e.backward(loss)
        e.step()
        return float(loss)
    a = engine()
    for _ in range(2):
        step(a)
    a.save_checkpoint(out, tag="step_000002", client_state={"step": 2, "gen": torch.Generator().get_state()})
    for f in sorted(os.listdir(os.path.join(out, "step_000002"))):
        assert not ckpt.refused_globals(os.path.join(out, "step_000002", f)), f
    next_a = step(a)
    b = engine()
    _, client = b.load_checkpoint(out, tag="step_000002")
    assert client["step"] == 2
    next_b = step(b)
    assert abs(next_a - next_b) < 1e-6, (next_a, next_b)
    print("ROUND_TRIP_OK", next_a, next_b)
""")


@pytest.mark.parametrize("stage, precision", [(2, "fp32"), (3, "bf16")])
def test_deepspeed_checkpoints_need_only_the_allow_list(stage, precision, tmp_path):
    """A real DeepSpeed save (ZeRO-2 fp32, ZeRO-3 bf16) holds nothing beyond the allow-list, and a fresh engine
    loads it weights-only and continues with the same loss as the engine that saved it."""
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "HOME": str(Path.home())}
    proc = subprocess.run([sys.executable, "-c", _ROUND_TRIP, str(stage), precision, str(tmp_path / "ck")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "ROUND_TRIP_OK" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]


# ---------------------------------------------------------------------------- integrity record

def test_a_recorded_checkpoint_verifies(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    assert ckpt.verify_checkpoint(path) is None
    record = json.loads((path / ckpt.INTEGRITY).read_text())["files"]
    assert set(record) == {"mp_rank_00_model_states.pt", "rng_rank0.pt", "config.yaml",
                           "export/lora/adapter_config.json"}
    assert record["config.yaml"]["size"] == len("train: {}\n")


@pytest.mark.parametrize("damage, reason", [
    ("truncate", "size"), ("flip", "sha256"), ("remove", "missing"), ("add", "not in the integrity record"),
    ("no_marker", "COMPLETE"), ("no_record", "no integrity record"), ("bad_record", "unreadable"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, reason):
    path = fake_checkpoint(tmp_path, 3)
    states = path / "mp_rank_00_model_states.pt"
    if damage == "truncate":
        states.write_bytes(states.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(states.read_bytes())
        data[len(data) // 2] ^= 0xFF
        states.write_bytes(bytes(data))
    elif damage == "remove":
        (path / "rng_rank0.pt").unlink()
    elif damage == "add":
        (path / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"x")
    elif damage == "no_marker":
        (path / ckpt.COMPLETE).unlink()
    elif damage == "no_record":
        (path / ckpt.INTEGRITY).unlink()
    elif damage == "bad_record":
        (path / ckpt.INTEGRITY).write_text("{not json")
    found = ckpt.verify_checkpoint(path)
    assert found is not None and reason in found and "\n" not in found


def test_a_payload_with_a_forged_record_is_still_refused(tmp_path):
    """An attacker who rewrites the integrity record too is stopped by the weights-only scan (nothing unpickled)."""
    path = fake_checkpoint(tmp_path, 3)
    marker = tmp_path / "MARKER"
    write_payload(path / "mp_rank_00_model_states.pt", marker)
    ckpt.write_integrity(path)
    found = ckpt.verify_checkpoint(path)
    assert found is not None and "io.open" in found
    assert not marker.exists()


def test_saving_again_into_a_folder_first_drops_its_marks(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    ckpt.clear_marks(path)
    assert not (path / ckpt.COMPLETE).exists() and not (path / ckpt.INTEGRITY).exists()
    assert ckpt.complete_checkpoints(tmp_path) == []


# ---------------------------------------------------------------------------- the resume decision

def test_auto_takes_the_newest_verified_checkpoint(tmp_path):
    fake_checkpoint(tmp_path, 3)
    newest = fake_checkpoint(tmp_path, 6)
    assert ckpt.choose_resume(tmp_path, "auto") == (newest, [], None)


def test_auto_falls_back_past_a_damaged_newest_and_says_so(tmp_path):
    older = fake_checkpoint(tmp_path, 3)
    newest = fake_checkpoint(tmp_path, 6)
    (newest / "mp_rank_00_model_states.pt").write_bytes(b"")
    path, notes, error = ckpt.choose_resume(tmp_path, "auto")
    assert path == older and error is None
    assert len(notes) == 1 and "step_000006 is damaged" in notes[0] and "falling back" in notes[0]


def test_auto_with_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    for step in (3, 6):
        (fake_checkpoint(tmp_path, step) / "rng_rank0.pt").unlink()
    path, notes, error = ckpt.choose_resume(tmp_path, "auto")
    assert path is None and len(notes) == 2 and "no usable checkpoint" in error


def test_auto_without_checkpoints_starts_fresh(tmp_path):
    path, notes, error = ckpt.choose_resume(tmp_path / "checkpoints", "auto")
    assert path is None and error is None and notes == ["resume auto: no complete checkpoint yet, starting fresh"]


def test_an_explicit_folder_must_verify(tmp_path):
    path = fake_checkpoint(tmp_path, 3)
    assert ckpt.choose_resume(tmp_path, str(path)) == (path, [], None)
    (path / ckpt.COMPLETE).unlink()
    _, _, error = ckpt.choose_resume(tmp_path, str(path))
    assert error == f"--resume {path}: no COMPLETE marker (an interrupted save)"
    _, _, error = ckpt.choose_resume(tmp_path, str(tmp_path / "nowhere"))
    assert error.endswith("not a folder")


def test_resolve_resume_raises_the_decision_as_one_line(tmp_path):
    info = DistInfo(0, 1, 0, "127.0.0.1", 0, "single")
    path = fake_checkpoint(tmp_path, 3)
    assert ckpt.resolve_resume(tmp_path, "auto", info) == path
    (path / ckpt.INTEGRITY).unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"^--resume .*step_000003: no integrity record"):
        ckpt.resolve_resume(tmp_path, str(path), info)
