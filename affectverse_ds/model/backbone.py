"""Loading and freezing the Qwen2.5-Omni thinker.

The 7B checkpoint and the embedded tiny backbone load through the same
function, :func:`load_thinker`. Only the thinker is built: the talker and
token2wav of the full Omni model are never instantiated.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2_5OmniThinkerConfig,
    Qwen2_5OmniThinkerForConditionalGeneration,
)

from affectverse_ds.config import BackboneConfig

Thinker = Qwen2_5OmniThinkerForConditionalGeneration


class BackboneError(RuntimeError):
    """The backbone directory is missing or is not a Qwen2.5-Omni checkpoint."""


def pick_attn_implementation(requested: str, device: torch.device) -> str:
    """flash_attention_2 where flash-attn is importable and the device is CUDA, else SDPA (``requested`` overrides)."""
    if requested != "auto":
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise BackboneError("backbone.attn_implementation=flash_attention_2 but flash-attn is not installed")
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[requested]


def read_thinker_config(path: str | Path) -> Qwen2_5OmniThinkerConfig:
    """The thinker config from a thinker-only config JSON or from a full Omni ``config.json`` (its ``thinker_config``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise BackboneError(f"no config.json at {path}")
    raw = json.loads(path.read_text())
    raw.pop("_comment", None)
    if raw.get("model_type") == "qwen2_5_omni":
        raw = raw["thinker_config"]
    if raw.get("model_type") != "qwen2_5_omni_thinker":
        raise BackboneError(f"{path}: model_type {raw.get('model_type')!r} is not a Qwen2.5-Omni (thinker) config")
    return Qwen2_5OmniThinkerConfig(**raw)


def _check_backbone_dir(path: Path) -> None:
    if not path.exists():
        raise BackboneError(
            f"backbone path {path} does not exist; download Qwen/Qwen2.5-Omni-7B there, or run "
            f"`python -m affectverse_ds.tools.make_tiny_backbone {path}` for the embedded tiny backbone"
        )
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone path {path} has no config.json: not a Hugging Face checkpoint directory")


def load_thinker(cfg: BackboneConfig, device: torch.device | str = "cpu") -> Thinker:
    """Load the thinker from ``cfg.path`` (a local directory), frozen, in eval mode.

    A full Qwen2.5-Omni checkpoint is read for its ``thinker.*`` weights only;
    a thinker-only directory (the tiny backbone) loads directly.
    """
    device = torch.device(device)
    path = Path(cfg.path)
    _check_backbone_dir(path)
    config = read_thinker_config(path)
    kwargs = dict(
        config=config,
        dtype=pick_dtype(cfg.dtype, device),
        attn_implementation=pick_attn_implementation(cfg.attn_implementation, device),
    )
    raw_type = json.loads((path / "config.json").read_text()).get("model_type")
    if raw_type == "qwen2_5_omni":
        # The released checkpoint stores the thinker under the "thinker." prefix.
        kwargs["key_mapping"] = {r"^thinker\.": ""}
    model = Thinker.from_pretrained(path, **kwargs)
    freeze(model)
    return model.to(device)


def build_thinker_on_meta(config_path: str | Path) -> Thinker:
    """The thinker architecture with no weights and no memory (parameter counting)."""
    config = read_thinker_config(config_path)
    with torch.device("meta"):
        return Thinker(config)


def freeze(model: torch.nn.Module) -> None:
    """Freeze every backbone parameter; LoRA and the EWM are added (trainable) afterwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The Qwen byte-level BPE tokenizer with the Omni special tokens, from the backbone directory."""
    path = Path(path)
    _check_backbone_dir(path)
    return AutoTokenizer.from_pretrained(path)


def language_model_lora_pattern(target_modules: list[str]) -> str:
    """A PEFT ``target_modules`` regex hitting only the language model's attention projections.

    A plain ``["q_proj", ...]`` list also matches the audio tower's attention
    (same module names), which the paper keeps frozen.
    """
    names = "|".join(sorted(target_modules))
    return rf"model\.language_model\.layers\.\d+\.self_attn\.({names})"
