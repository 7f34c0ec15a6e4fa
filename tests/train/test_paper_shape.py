"""Training in the paper's shape on 2 CPU ranks through DeepSpeed's launcher: accumulation > 1, two benchmarks
mixed with weights, whole epochs (train.max_steps=0), save_every larger than the run.

Shards: meld (5 + 4 + 3 samples) and cmumosi (4 + 3) with weights {meld: 1, cmumosi: 2}: 26 samples per epoch,
13 micro-batches per rank, accumulation 3 -> 4 optimizer steps per epoch (1 micro-batch left out), 2 epochs = 8.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affectverse_ds.distributed import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PEAK_LR = 1e-3
STEPS = 8


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _write_shards():
    from affectverse_ds.tools.fixture_shards import write_test_shards

    return write_test_shards


@pytest.fixture(scope="module")
def paper_run(tiny_backbone_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("paper_shape")
    shards = base / "shards"
    write = _write_shards()
    write(shards, [5, 4, 3], seconds=1.0, frame_size=56)
    write(shards, [4, 3], benchmark="cmumosi", seconds=1.0, frame_size=56)
    run = base / "run"
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py",
           "--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml",
           f"data.shard_dir={shards}", f"backbone.path={tiny_backbone_dir}", f"train.out_dir={run}",
           "data.train_benchmarks={meld: 1.0, cmumosi: 2.0}", "data.num_workers=1",
           "train.max_steps=0", "train.epochs=2", "train.micro_batch=1", "train.grad_accum=3",
           "train.save_every=1000", "train.warmup_ratio=0.1", "train.log_every=1"]
    log = base / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    if proc.returncode != 0:
        pytest.fail(f"deepspeed exited {proc.returncode}:\n" + "\n".join(text.splitlines()[-40:]))
    return run, shards, text


def test_step_count_and_the_start_line(paper_run):
    run, _, log = paper_run
    assert ("run plan: 26 samples/epoch, 13 micro-batches/epoch per rank (micro 1 x 2 ranks; 1 left out as a "
            "partial window of accum 3), 4 optimizer steps/epoch, 8 total steps (2 epochs), 1 warm-up steps") in log
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["eta_s"] == 0.0
    assert "stopped by" not in log  # the run ended because its plan ended


def test_schedule_ends_at_its_minimum(paper_run):
    from transformers import get_cosine_schedule_with_warmup

    run, _, _ = paper_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=PEAK_LR), 1, STEPS)
    expected = []
    for _ in range(STEPS):
        expected.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    lrs = [r["lr"] for r in rows]
    assert lrs[-1] == min(lrs[1:]) and lrs[-1] < 0.1 * PEAK_LR  # the last step ran nearest the minimum (0, after it)
    state = torch.load(run / "checkpoints" / f"step_{STEPS:06d}" / "mp_rank_00_model_states.pt", weights_only=True)
    assert state["lr_scheduler"]["last_epoch"] == STEPS  # the saved schedule is finished
    assert state["lr_scheduler"]["_last_lr"][0] == pytest.approx(0.0, abs=1e-12)


def test_last_step_checkpoint_although_save_every_is_larger_than_the_run(paper_run):
    run, _, _ = paper_run
    saved = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert saved == [f"step_{STEPS:06d}"]
    last = run / "checkpoints" / saved[0]
    for name in ("COMPLETE", "rng_rank0.pt", "rng_rank1.pt", "config.yaml", "export/lora/adapter_config.json",
                 "export/ewm.safetensors"):
        assert (last / name).is_file(), name
    state = torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["micro_in_epoch"]) == (STEPS, 2, 0)


def test_export_loads_with_peft_and_gives_the_in_memory_logits(paper_run, tiny_backbone_dir):
    """The export, loaded with PeftModel.from_pretrained, holds exactly the trained in-memory weights (the digest
    the run recorded at its end) and gives the same logits as the model restored from DeepSpeed's checkpoint."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from affectverse_ds.config import load_config
    from affectverse_ds.data.loader import build_eval_loader
    from affectverse_ds.model.affect_model import AffectVerseModel, build_model
    from affectverse_ds.model.backbone import load_thinker, load_tokenizer
    from affectverse_ds.model.ewm import EmotionWorldModule
    from affectverse_ds.train.loop import trainable_digest

    run, shards, _ = paper_run
    last = run / "checkpoints" / f"step_{STEPS:06d}"
    cfg = load_config(last / "export" / "config.yaml",
                      [f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={shards}"])
    peft_thinker = PeftModel.from_pretrained(load_thinker(cfg.backbone), last / "export" / "lora")
    ewm = EmotionWorldModule(cfg.ewm, peft_thinker.config.text_config.hidden_size)
    ewm.load_state_dict(load_file(str(last / "export" / "ewm.safetensors")))
    exported = AffectVerseModel(peft_thinker, ewm, cfg)
    in_memory = json.loads((run / "final_state.json").read_text())["trainable_sha256_per_rank"]
    assert len(in_memory) == 2 and trainable_digest(exported.trainable_parameters()) == in_memory[0] == in_memory[1]

    live = build_model(cfg)
    missing, unexpected = live.load_state_dict(
        torch.load(last / "mp_rank_00_model_states.pt", weights_only=True)["module"], strict=False)
    assert not unexpected and all("lora_" not in k and not k.startswith("ewm.") for k in missing)
    batch = next(iter(build_eval_loader(cfg, load_tokenizer(tiny_backbone_dir), "meld", split="train", rank=0,
                                        world=1, batch_size=3)))
    batch = {k: v for k, v in batch.items() if k != "meta"}
    live.eval(), exported.eval()
    with torch.no_grad():
        a, b = live(batch), exported(batch)
    assert torch.equal(a.logits, b.logits), (a.logits - b.logits).abs().max()
    assert any(p.abs().sum() > 0 for n, p in exported.trainable_parameters() if "lora_B" in n)  # it trained
