"""Training through DeepSpeed's own launcher (and torchrun) on 2 CPU ranks with gloo.

Shards come from the real fixture maker and shard builder (MELD, processed layout), split
unevenly (5, 5, 3 samples) so the two ranks read different shard counts. Each launch costs
~20-40 s of start-up, so the runs are module fixtures shared by the assertions.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affectverse_ds.distributed import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STEPS = 6


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _overrides(shards: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"data.shard_dir={shards}", f"backbone.path={backbone}", f"train.out_dir={out}",
        f"train.max_steps={STEPS}", "train.save_every=3", "train.log_every=1", "data.num_workers=1",
        "train.micro_batch=2", "train.grad_accum=1", *extra,
    ]


def _run(cmd: list[str], log: Path, timeout: int = 420) -> None:
    """Run a launcher; a hang (e.g. ranks waiting on each other) fails at the timeout instead of blocking CI."""
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{tail}")


def deepspeed_cmd(*args: str) -> list[str]:
    return [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py",
            "--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml", *args]


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss/total"] for r in rows}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from affectverse_ds.data.shards import ShardLimits, build_shards
    from data_prep.make_fixtures import make_fixture

    base = tmp_path_factory.mktemp("ds_data")
    root = make_fixture("meld", "unibench", base / "raw", n=13, split="train", seed=1)
    out = base / "shards"
    build_shards("meld", "unibench", root, "train", out, workers=1, limits=ShardLimits(max_count=5), progress=False)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sorted(sizes.values()) == [3, 5, 5]  # uneven on purpose: rank 0 gets two shards, rank 1 one
    return out


@pytest.fixture(scope="module")
def full_run(shards, tiny_backbone_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    _run(deepspeed_cmd(*_overrides(shards, tiny_backbone_dir, out / "run")), out / "log.txt")
    return out / "run"


def test_loss_falls_and_every_step_is_logged(full_run):
    curve = losses(full_run)
    assert sorted(curve) == list(range(1, STEPS + 1))
    assert curve[STEPS] < curve[1] - 0.1, curve


def test_trainable_weights_identical_on_both_ranks(full_run):
    digests = json.loads((full_run / "final_state.json").read_text())["trainable_sha256_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_checkpoints_are_complete_pruned_and_self_describing(full_run):
    ckpts = sorted(p.name for p in (full_run / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000003", "step_000006"]  # keep_last=2 in tiny.yaml
    last = full_run / "checkpoints" / "step_000006"
    assert (last / "COMPLETE").is_file() and (last / "rng_rank0.pt").is_file() and (last / "rng_rank1.pt").is_file()
    state = torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)
    assert state["step"] == STEPS and state["config"]["train"]["max_steps"] == STEPS
    # frozen backbone weights are excluded: only LoRA and EWM tensors are stored
    assert state["module"] and all("lora_" in k or k.startswith("ewm.") for k in state["module"])
    assert (last / "export" / "lora" / "adapter_config.json").is_file()
    assert (last / "export" / "ewm.safetensors").is_file()


def test_interrupted_then_resumed_gives_the_same_losses(full_run, shards, tiny_backbone_dir, tmp_path):
    run = tmp_path / "run"
    args = _overrides(shards, tiny_backbone_dir, run)
    _run(deepspeed_cmd(*args, "train.stop_after_steps=4"), tmp_path / "first.txt")
    assert sorted(losses(run)) == [1, 2, 3, 4]
    _run(deepspeed_cmd("--resume", "auto", *args), tmp_path / "second.txt")
    resumed, uninterrupted = losses(run), losses(full_run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step


def test_torchrun_gives_the_same_losses_as_deepspeed(full_run, shards, tiny_backbone_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "launch/train.py",
           "--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml",
           *_overrides(shards, tiny_backbone_dir, run)]
    _run(cmd, tmp_path / "log.txt")
    ours, reference = losses(run), losses(full_run)
    assert sorted(ours) == sorted(reference)
    for step, value in reference.items():
        assert ours[step] == pytest.approx(value, rel=1e-5, abs=1e-6), step


def test_export_loads_with_peft_and_matches_the_trained_weights(full_run, tiny_backbone_dir, shards):
    """The PEFT-format export, loaded with PeftModel.from_pretrained, equals the DeepSpeed checkpoint's weights."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from affectverse_ds.config import load_config
    from affectverse_ds.data.loader import build_eval_loader
    from affectverse_ds.model.affect_model import AffectVerseModel, build_model
    from affectverse_ds.model.backbone import load_thinker, load_tokenizer
    from affectverse_ds.model.ewm import EmotionWorldModule

    last = full_run / "checkpoints" / "step_000006"
    cfg = load_config(last / "export" / "config.yaml", [f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={shards}"])
    live = build_model(cfg)  # the trained weights as DeepSpeed saved them
    missing, unexpected = live.load_state_dict(
        torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)["module"], strict=False)
    assert not unexpected and all("lora_" not in k and not k.startswith("ewm.") for k in missing)

    peft_thinker = PeftModel.from_pretrained(load_thinker(cfg.backbone), last / "export" / "lora")
    ewm = EmotionWorldModule(cfg.ewm, peft_thinker.config.text_config.hidden_size)
    ewm.load_state_dict(load_file(str(last / "export" / "ewm.safetensors")))
    exported = AffectVerseModel(peft_thinker, ewm, cfg)

    tok = load_tokenizer(tiny_backbone_dir)
    batch = next(iter(build_eval_loader(cfg, tok, "meld", split="train", rank=0, world=1, batch_size=3)))
    batch = {k: v for k, v in batch.items() if k != "meta"}
    live.eval(), exported.eval()
    with torch.no_grad():
        a, b = live(batch), exported(batch)
    assert torch.allclose(a.logits, b.logits, atol=1e-5), (a.logits - b.logits).abs().max()
    lora_b = [p for n, p in live.thinker.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # training moved LoRA away from its zero init


def test_sigusr1_saves_at_the_next_step_and_exits_cleanly(shards, tiny_backbone_dir, tmp_path):
    """SLURM's --signal=USR1@T reaches every rank: they agree on a step, checkpoint it and exit 0."""
    import signal
    import time

    run = tmp_path / "run"
    args = _overrides(shards, tiny_backbone_dir, run)
    args = [a for a in args if not a.startswith(("train.max_steps", "train.save_every"))]
    cmd = deepspeed_cmd(*args, "train.max_steps=400", "train.save_every=1000")
    with open(tmp_path / "log.txt", "w") as log:
        # a session of its own, so a failure can end the ranks too (they would otherwise hold the port)
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and proc.poll() is None and not (run / "metrics.jsonl").is_file():
                time.sleep(1)
            assert (run / "metrics.jsonl").is_file(), "training never started"
            # deepspeed runner -> deepspeed.launcher.launch -> the two ranks (their loader workers are grandchildren)
            launcher = _children(proc.pid)
            ranks = _children(launcher[0]) if len(launcher) == 1 else []
            assert len(ranks) == 2, (launcher, ranks)
            for pid in ranks:
                os.kill(pid, signal.SIGUSR1)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, (tmp_path / "log.txt").read_text()[-3000:]
    steps = sorted(losses(run))
    assert 1 <= steps[-1] < 400
    saved = sorted((run / "checkpoints").glob("step_*"))
    assert [p.name for p in saved] == [f"step_{steps[-1]:06d}"] and (saved[0] / "COMPLETE").is_file()
