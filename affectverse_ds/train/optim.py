"""Parameter groups and the learning-rate schedule (AdamW, cosine with linear warm-up)."""
from __future__ import annotations

import math
from typing import Iterable

import torch


def param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay on weight matrices; none on norms, biases and 0/1-D tensors (alpha, tags, queries).

    Learnable query/tag/step embeddings are 2-D but act like biases; they are named
    ``*_queries``/``*_embed``/``e_*`` in the EWM and kept out of decay too.
    """
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = p.ndim < 2 or "norm" in name.lower() or leaf == "bias" or "embed" in name or "queries" in name
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def cosine_with_warmup(total_steps: int, warmup_ratio: float, min_ratio: float = 0.0):
    """LR multiplier for step ``s``: linear 0->1 over the warm-up, then cosine 1->min_ratio."""
    total_steps = max(1, total_steps)
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(total_steps: int, warmup_ratio: float):
    """A DeepSpeed scheduler callable: ``optimizer -> LambdaLR``."""
    factor = cosine_with_warmup(total_steps, warmup_ratio)
    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
