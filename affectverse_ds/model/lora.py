"""LoRA adapters (PEFT) on the thinker's language-model attention projections."""
from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from affectverse_ds.config import LoraConfig
from affectverse_ds.model.backbone import language_model_lora_pattern


def peft_lora_config(cfg: LoraConfig) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=language_model_lora_pattern(cfg.target_modules),
        bias="none",
    )


def apply_lora(thinker: torch.nn.Module, cfg: LoraConfig) -> PeftModel:
    """Wrap the (frozen) thinker with LoRA; only the adapter weights train.

    PEFT initialises B to zero, so the wrapped model starts equal to the bare thinker.
    """
    return get_peft_model(thinker, peft_lora_config(cfg))


def lora_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
