"""The training loop in one process, as the loop tests run it: the tiny preset on two mixed benchmarks, a run
that counts its micro-batches, and the run folder's metrics and trainable weights."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def loop_config(backbone: Path, shards: Path, out: Path, *extra: str):
    from affectverse_ds.config import load_config

    return load_config(REPO / "launch/configs/tiny.yaml", [
        f"backbone.path={backbone}", f"data.shard_dir={shards}", f"train.out_dir={out}",
        "data.train_benchmarks={meld: 1.0, cmumosi: 2.0}", "data.num_workers=0", "train.max_steps=-1",
        "train.save_every=1000", "train.keep_last=1", "train.log_every=1", "train.warmup_ratio=0.1", *extra])


@dataclass
class Run:
    trainer: object
    result: object
    micro_batches: int  # micro-batches the loop ran


def train(cfg, resume: str | None = None) -> Run:
    from affectverse_ds.train.loop import Trainer

    trainer = Trainer(cfg, REPO / "ds_configs/zero2.json", resume=resume)
    counted = []
    step = trainer._micro_step
    trainer._micro_step = lambda batch, acc: (counted.append(len(batch["meta"])), step(batch, acc))
    return Run(trainer, trainer.train(), len(counted))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.trainable_parameters()}
