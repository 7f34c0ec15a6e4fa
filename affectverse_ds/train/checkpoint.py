"""Checkpoints that describe themselves, and the small trainable-only export.

Layout of ``<out_dir>/checkpoints/step_000100/``:
  DeepSpeed's own files (trainable weights only, optimizer shards, scheduler, client state)
  rng_rank{r}.pt     each rank's RNG states (loaded with weights_only=True)
  config.yaml        the resolved config
  export/            lora/ (PEFT adapter), ewm.safetensors, config.yaml: for evaluation and sharing
  COMPLETE           written last, after every rank finished: only such folders count as checkpoints
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from affectverse_ds.config import AffectVerseConfig, dump_config
from affectverse_ds.train import distributed as dist

COMPLETE = "COMPLETE"
_STEP_RE = re.compile(r"^step_(\d{6,})$")


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


def complete_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Finished checkpoints, oldest first (a folder without COMPLETE is an interrupted save and is ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if _STEP_RE.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    done = complete_checkpoints(ckpt_dir)
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors/ints/lists, so ``weights_only=True`` can load them."""
    np_name, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0]],
        "python_gauss": random.getstate()[2],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_gauss, np_cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-1], tuple(py[:-1]), state["python_gauss"]))
    name, keys, pos, gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(engine, model, cfg: AffectVerseConfig, step: int, client_state: dict[str, Any],
                    info: dist.DistInfo) -> Path:
    """Save on every rank (DeepSpeed requires it), then mark complete on rank 0 and prune to ``keep_last``."""
    ckpt_dir = Path(cfg.train.out_dir) / "checkpoints"
    tag = step_tag(step)
    path = ckpt_dir / tag
    if info.is_main:
        # saving over a folder of the same step (a resumed run reaching it again): it stops counting as complete
        # until this save has finished
        (path / COMPLETE).unlink(missing_ok=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, exclude_frozen_parameters=True)
    torch.save(rng_state(), path / f"rng_rank{info.rank}.pt")
    if info.is_main:
        dump_config(cfg, path / "config.yaml")
        export_trainable(model, cfg, path / "export")
    dist.barrier()  # every rank has written its shards and RNG state
    if info.is_main:
        (path / COMPLETE).write_text(f"{step}\n")
        for old in prune_list(complete_checkpoints(ckpt_dir), path, cfg.train.keep_last):
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return path


def prune_list(complete: list[Path], newest: Path, keep_last: int) -> list[Path]:
    """The checkpoints ``keep_last`` lets go: all but ``newest`` (the one just saved, kept whatever its step
    number, e.g. after resuming from an earlier checkpoint) and the ``keep_last - 1`` latest others."""
    others = [p for p in complete if p.resolve() != newest.resolve()]
    return others[:max(0, len(others) - (keep_last - 1))]


def load_checkpoint(engine, path: Path, info: dist.DistInfo) -> dict[str, Any]:
    """Restore engine state, this rank's RNG state, and return the client state."""
    _, client_state = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=False)
    rng_file = path / f"rng_rank{info.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return client_state or {}


def export_trainable(model, cfg: AffectVerseConfig, out: str | Path) -> Path:
    """LoRA adapter in PEFT format, EWM weights in safetensors, the config: all evaluation needs beside the backbone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.lora.enabled:
        model.thinker.save_pretrained(out / "lora")
    ewm_state = model.ewm_state_dict()
    if ewm_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in ewm_state.items()}, str(out / "ewm.safetensors"))
    dump_config(cfg, out / "config.yaml")
    return out


def load_ewm_weights(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
