"""Training the real model under ZeRO-3 (``ds_configs/zero3.json``) on 2 CPU ranks through DeepSpeed's launcher.

One recipe (two weighted benchmarks, accumulation 2, a whole epoch) trained three ways: under ZeRO-2; under
ZeRO-3 stopped after 2 steps; and that ZeRO-3 run resumed to its end. ZeRO-3 partitions every weight, the
frozen backbone's too, so the model's forward must let DeepSpeed gather each weight where it is read (the EWM's
outputs are ``ModelOutput``s, its weights registered with it) and the export must gather the slices.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affectverse_ds.distributed import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# meld 4 + 3 and cmumosi 3 with weights {meld: 1, cmumosi: 2}: 13 samples, 6 micro-batches of 1 per rank,
# accumulation 2: 3 optimizer steps
STEPS = 3
PORTS: list[int] = []  # the master port of every launch here


def _recipe(shards: Path, backbone: Path) -> list[str]:
    """The overrides of launch/configs/tiny.yaml every launch here trains with (before its own)."""
    return [f"data.shard_dir={shards}", f"backbone.path={backbone}", "data.train_benchmarks={meld: 1.0, cmumosi: 2.0}",
            "data.num_workers=1", "train.max_steps=0", "train.epochs=1", "train.micro_batch=1", "train.grad_accum=2",
            "train.save_every=1000", "train.warmup_ratio=0.1", "train.log_every=1"]


def _launch(ds: str, shards: Path, backbone: Path, out: Path, *extra: str, resume: bool = False) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    PORTS.append(free_port())
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(PORTS[-1]), "launch/train.py",
           *(["--resume", "auto"] if resume else []), "--ds", ds, "--config", "launch/configs/tiny.yaml",
           *_recipe(shards, backbone), f"train.out_dir={out}", *extra]
    log = out.parent / f"{out.name}.log"
    with open(log, "a") as f:  # its own process group: a hung run's ranks are killed with the launcher
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            tail = "\n".join(log.read_text().splitlines()[-40:])
            pytest.fail(f"{ds} run still running after 600 s (killed):\n{tail}")
    text = log.read_text()
    if proc.returncode != 0:
        pytest.fail(f"{ds} run exited {proc.returncode}:\n" + "\n".join(text.splitlines()[-40:]))
    return text


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss/total"] for r in rows}  # a resumed run appends: the last row of a step wins


@pytest.fixture(scope="module")
def runs(tiny_backbone_dir, two_benchmark_shards, tmp_path_factory):
    base, shards = tmp_path_factory.mktemp("zero3"), two_benchmark_shards
    _launch("ds_configs/zero2.json", shards, tiny_backbone_dir, base / "zero2")
    _launch("ds_configs/zero3.json", shards, tiny_backbone_dir, base / "zero3", "train.stop_after_steps=2")
    first = sorted(p.name for p in (base / "zero3" / "checkpoints").glob("step_*"))
    log = _launch("ds_configs/zero3.json", shards, tiny_backbone_dir, base / "zero3", resume=True)
    return base, shards, first, log


def test_zero3_trains_the_same_model_as_zero2_and_resumes(runs):
    base, _, first, log = runs
    assert first == ["step_000002"]  # the stopped run saved where it stopped
    assert "resum" in log.lower()
    z2, z3 = _losses(base / "zero2"), _losses(base / "zero3")
    assert sorted(z2) == sorted(z3) == list(range(1, STEPS + 1))
    assert [z3[s] for s in sorted(z3)] == pytest.approx([z2[s] for s in sorted(z2)], rel=1e-4)
    last = base / "zero3" / "checkpoints" / f"step_{STEPS:06d}"
    for rank in (0, 1):  # ZeRO-3: every rank writes its own slice of the weights and of the optimizer
        assert (last / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt").is_file()
        assert (last / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()


def _exported(last: Path, cfg):
    from peft import PeftModel
    from safetensors.torch import load_file

    from affectverse_ds.model.affect_model import AffectVerseModel
    from affectverse_ds.model.backbone import load_thinker
    from affectverse_ds.model.ewm import EmotionWorldModule

    thinker = PeftModel.from_pretrained(load_thinker(cfg.backbone), last / "export" / "lora")
    ewm = EmotionWorldModule(cfg.ewm, thinker.config.text_config.hidden_size)
    ewm.load_state_dict(load_file(str(last / "export" / "ewm.safetensors")))
    return AffectVerseModel(thinker, ewm, cfg)


def test_zero3_export_holds_the_trained_weights_and_gives_their_logits(runs, tiny_backbone_dir):
    """The export (gathered from the slices) equals the trained weights (the digest every rank recorded of
    its gathered weights at the end), gives the same logits as DeepSpeed's own consolidation of the ZeRO-3
    checkpoint (``zero_to_fp32``), and is close to the ZeRO-2 run's export."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from affectverse_ds.config import load_config
    from affectverse_ds.data.loader import build_eval_loader
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.model.backbone import load_tokenizer
    from affectverse_ds.train.loop import trainable_digest

    base, shards, _, _ = runs
    last = base / "zero3" / "checkpoints" / f"step_{STEPS:06d}"
    cfg = load_config(last / "export" / "config.yaml", [f"backbone.path={tiny_backbone_dir}", f"data.shard_dir={shards}"])
    exported = _exported(last, cfg)
    recorded = json.loads((base / "zero3" / "final_state.json").read_text())["trainable_sha256_per_rank"]
    assert len(recorded) == 2 and trainable_digest(exported.trainable_parameters()) == recorded[0] == recorded[1]
    assert all(p.numel() > 0 for _, p in exported.trainable_parameters())

    live = build_model(cfg)
    consolidated = get_fp32_state_dict_from_zero_checkpoint(last.parent, tag=last.name)
    missing, unexpected = live.load_state_dict(consolidated, strict=False)
    assert not unexpected and all("lora_" not in k and not k.startswith("ewm.") for k in missing)
    batch = next(iter(build_eval_loader(cfg, load_tokenizer(tiny_backbone_dir), "meld", split="train", rank=0,
                                        world=1, batch_size=3)))
    batch = {k: v for k, v in batch.items() if k != "meta"}
    zero2 = _exported(base / "zero2" / "checkpoints" / f"step_{STEPS:06d}", cfg)
    for m in (live, exported, zero2):
        m.eval()
    with torch.no_grad():
        a, b, c = live(batch), exported(batch), zero2(batch)
    assert torch.equal(a.logits, b.logits), (a.logits - b.logits).abs().max()
    assert torch.allclose(b.logits, c.logits, rtol=1e-3, atol=1e-4), (b.logits - c.logits).abs().max()
    assert any(p.abs().sum() > 0 for n, p in exported.trainable_parameters() if "lora_B" in n)  # it trained


def test_no_shared_memory_segment_is_left_behind(runs):
    """DeepSpeed's CPU all-reduce creates a 66 MB /dev/shm segment per rank and never removes it; every run
    here (ZeRO-2, ZeRO-3, resumed) must leave none (``distributed.release_shm_buffer``)."""
    assert len(PORTS) == 3
    left = [p.name for port in PORTS for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert not left, left


def test_zero3_trains_clips_missing_a_stream_as_zero2_does(tiny_backbone_dir, two_benchmark_shards, tmp_path):
    """``data.input_modality_dropout=0.9``: most micro-batches lack video or audio, often on one rank and not on
    the other, yet every rank must make the same module calls (``AffectVerseModel.uniform_calls``, set by the
    engine under ZeRO-3). Before that mode this run hung at its first step (gloo has also stopped there with
    "distributed collective mismatch"; NCCL hangs). Same losses as ZeRO-2 on the same clips and drops."""
    from affectverse_ds.config import load_config
    from affectverse_ds.data.loader import build_train_loader
    from affectverse_ds.model.backbone import load_tokenizer

    # the case happens: at some micro-step one rank's clip lacks a stream the other rank's clip has
    dropout = "data.input_modality_dropout=0.9"
    cfg = load_config(REPO / "launch/configs/tiny.yaml", [*_recipe(two_benchmark_shards, tiny_backbone_dir), dropout])
    tok = load_tokenizer(tiny_backbone_dir)
    streams = [[(bool(b["has_video"].any()), bool(b["has_audio"].any()))
                for b in build_train_loader(cfg, tok, rank=r, world=2, epoch=0)] for r in (0, 1)]
    assert len(streams[0]) == len(streams[1]) == 2 * STEPS
    assert any(x != y for x, y in zip(*streams)), streams
    ports = len(PORTS)
    for ds in ("zero2", "zero3"):
        _launch(f"ds_configs/{ds}.json", two_benchmark_shards, tiny_backbone_dir, tmp_path / ds, dropout)
    z2, z3 = _losses(tmp_path / "zero2"), _losses(tmp_path / "zero3")
    assert sorted(z2) == sorted(z3) == list(range(1, STEPS + 1))
    assert [z3[s] for s in sorted(z3)] == pytest.approx([z2[s] for s in sorted(z2)], rel=1e-4)
    left = [p.name for port in PORTS[ports:] for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert not left, left
