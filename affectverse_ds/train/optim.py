"""Parameter groups and the learning-rate schedule (AdamW, linear warm-up then cosine to zero)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

# Weight matrices of these modules are decayed; nothing else is (minGPT's rule, by module type rather
# than by name): embeddings (type_emb), learned queries/tags/step vectors held as bare Parameters
# (imagine.*.future, imagine.*.step, tags, mama_*.queries, alpha), LayerNorm/RMSNorm weights and biases.
DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def decayed(model: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` of ``model`` gets weight decay: the ``weight`` of a Linear/Conv module."""
    owner_name, _, leaf = name.rpartition(".")
    if leaf != "weight":
        return False
    owner = model.get_submodule(owner_name) if owner_name else model
    return isinstance(owner, DECAYED_MODULES)


def param_groups(model: nn.Module, named_params: Iterable[tuple[str, nn.Parameter]],
                 weight_decay: float) -> list[dict]:
    """Two AdamW groups over ``named_params`` (names as in ``model.named_parameters()``): decay on Linear/Conv
    weight matrices (LoRA's A and B included), none on everything else (see ``DECAYED_MODULES``)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (decay if decayed(model, name) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_scheduler(total_steps: int, warmup_steps: int):
    """A DeepSpeed scheduler callable ``optimizer -> LambdaLR``: transformers' linear warm-up over
    ``warmup_steps`` then cosine to 0 at ``total_steps`` (DeepSpeed steps it once per optimizer step)."""
    from transformers import get_cosine_schedule_with_warmup

    def make(optimizer: torch.optim.Optimizer):
        return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup_steps,
                                               num_training_steps=total_steps)

    return make
