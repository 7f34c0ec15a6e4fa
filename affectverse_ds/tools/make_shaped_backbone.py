"""Write a 7B-shaped backbone: the real Qwen2.5-Omni-7B thinker config with only its depths reduced, random, bf16.

    python -m affectverse_ds.tools.make_shaped_backbone OUT_DIR [--layers 2] [--vision-depth 2] \
        [--audio-layers 2] [--dtype bfloat16] [--seed 0]

Every width, head count, vocabulary size, ``mrope_section``, window size and special token id is the one of
``launch/configs/qwen2_5_omni_7b_thinker.json``; only ``text_config.num_hidden_layers``,
``vision_config.depth`` (with ``fullatt_block_indexes`` re-placed so the last block stays a
full-attention block, the others window attention, as in the 7B) and ``audio_config.encoder_layers``
change. The directory has the files of a real checkpoint (config.json, safetensors, tokenizer,
preprocessor config), so ``load_thinker`` (the 7B's loading code) reads it unchanged.

At 2/2/2 depths the thinker has ~1.6B parameters (3.2 GB in bf16): the 152064 x 3584 embedding and
LM head alone are 1.09B.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from affectverse_ds import configs
from affectverse_ds.model.backbone import Thinker, read_thinker_config
from affectverse_ds.tools.make_tiny_backbone import PREPROCESSOR_CONFIG, build_tokenizer

SEVEN_B_CONFIG = configs.LAUNCH / "qwen2_5_omni_7b_thinker.json"
SHAPED_MARKER = "shaped_backbone.json"


def shaped_thinker_config(layers: int = 2, vision_depth: int = 2, audio_layers: int = 2,
                          source: str | Path = SEVEN_B_CONFIG):
    """The 7B thinker config with depths reduced; everything else as in ``source``."""
    if min(layers, vision_depth, audio_layers) < 1:
        raise ValueError("every depth must be >= 1")
    cfg = read_thinker_config(source)
    cfg.text_config.num_hidden_layers = layers
    cfg.text_config.max_window_layers = layers
    if getattr(cfg.text_config, "layer_types", None) is not None:
        cfg.text_config.layer_types = cfg.text_config.layer_types[:layers]
    cfg.vision_config.depth = vision_depth
    # the 7B has a full-attention block every 8th (7, 15, 23, 31), window attention elsewhere:
    # keep the last block full-attention so both kinds run whenever depth >= 2
    cfg.vision_config.fullatt_block_indexes = [vision_depth - 1]
    cfg.audio_config.encoder_layers = audio_layers
    cfg.audio_config.num_hidden_layers = audio_layers
    return cfg


def make_shaped_backbone(out: str | Path, layers: int = 2, vision_depth: int = 2, audio_layers: int = 2,
                         dtype: torch.dtype = torch.bfloat16, seed: int = 0) -> Path:
    """Write the depth-reduced 7B thinker (random, ``dtype``), tokenizer and preprocessor config; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = shaped_thinker_config(layers, vision_depth, audio_layers)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    # initialise directly in the target dtype: an fp32 init of the 1.6B parameters would need 6.4 GB
    torch.set_default_dtype(dtype)
    try:
        model = Thinker(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = dtype
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    (out / SHAPED_MARKER).write_text(json.dumps({
        "source": f"launch/configs/{SEVEN_B_CONFIG.name}", "layers": layers, "vision_depth": vision_depth,
        "audio_layers": audio_layers, "dtype": str(dtype).removeprefix("torch."), "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
    }, indent=2))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output directory")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (7B: 28)")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision blocks (7B: 32); the last is full-attention")
    parser.add_argument("--audio-layers", type=int, default=2, help="audio encoder layers (7B: 32)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_shaped_backbone(args.out, args.layers, args.vision_depth, args.audio_layers,
                                getattr(torch, args.dtype), args.seed)
    n = json.loads((path / SHAPED_MARKER).read_text())["parameters"]
    print(f"7B-shaped Qwen2.5-Omni thinker ({n / 1e9:.2f}B parameters, {args.dtype}) written to {path}")


if __name__ == "__main__":
    main()
