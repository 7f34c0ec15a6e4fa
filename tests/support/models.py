"""Model set-up the model tests share."""
from __future__ import annotations

import torch


def nonzero_lora_b(model) -> None:
    """PEFT starts B at zero, which zeroes A's gradient and hides LoRA from the forward; give B values."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.thinker.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
