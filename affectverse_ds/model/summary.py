"""Parameter counts of the configured model, built on the meta device (no weights, no memory).

    python -m affectverse_ds.model.summary --config launch/configs/affectverse_7b.yaml [key=value ...]

Prints one JSON object: backbone_params, lora_params, ewm_params, trainable_params.
"""
from __future__ import annotations

import argparse
import json

import torch

from affectverse_ds.config import AffectVerseConfig, ConfigError, load_config
from affectverse_ds.model.backbone import build_thinker_on_meta
from affectverse_ds.model.ewm import EmotionWorldModule
from affectverse_ds.model.lora import apply_lora, lora_parameter_count


def parameter_summary(cfg: AffectVerseConfig) -> dict[str, int]:
    """Counts for ``cfg`` with the thinker architecture of ``backbone.arch_config`` (or ``backbone.path``)."""
    thinker = build_thinker_on_meta(cfg.backbone.arch_config or cfg.backbone.path)
    backbone = sum(p.numel() for p in thinker.parameters())
    d_model = thinker.config.text_config.hidden_size
    lora = 0
    if cfg.lora.enabled:
        lora = lora_parameter_count(apply_lora(thinker, cfg.lora))
    ewm = 0
    if cfg.ewm.enabled:
        with torch.device("meta"):
            ewm = sum(p.numel() for p in EmotionWorldModule(cfg.ewm, d_model).parameters())
    return {"backbone_params": backbone, "lora_params": lora, "ewm_params": ewm, "trainable_params": lora + ewm}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (defaults only when omitted)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    print(json.dumps(parameter_summary(cfg)))


if __name__ == "__main__":
    main()
