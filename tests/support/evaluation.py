"""Evaluation set-up the evaluation and adversarial tests share: the tiny preset pointed at test shards and
wheels, and a checkpoint as training writes it."""
from __future__ import annotations

from pathlib import Path

import torch

from affectverse_ds.config import load_config

REPO = Path(__file__).resolve().parents[2]


def tiny_eval_config(backbone: Path, shard_dir: Path, reference: Path, *extra: str):
    """The tiny preset reading ``shard_dir`` and the wheels in ``reference/emotion_wheel``."""
    return load_config(REPO / "launch" / "configs" / "tiny.yaml", [
        f"backbone.path={backbone}", f"data.shard_dir={shard_dir}",
        f"eval.wheel_dir={Path(reference) / 'emotion_wheel'}",
        "data.num_workers=0", "eval.batch_size=2", "eval.max_new_tokens=4", *extra])


def make_checkpoint(cfg, folder: Path, seed: int) -> Path:
    """A checkpoint as training writes it (``step_NNNNNN/export/``), without DeepSpeed: the tiny model with
    its trainable weights moved away from their init, exported by ``model.export.export_trainable``."""
    from affectverse_ds.model.affect_model import build_model
    from affectverse_ds.model.export import export_trainable

    torch.manual_seed(seed)
    model = build_model(cfg, "cpu")
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    export_trainable(model, cfg, folder / "export")
    return folder
