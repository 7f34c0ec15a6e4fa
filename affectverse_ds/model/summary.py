"""Parameter counts of the configured model, built on the meta device (no weights, no memory).

    python -m affectverse_ds.model.summary --config launch/configs/affectverse_7b.yaml [key=value ...]

Prints one JSON object: backbone_params, lora_params, ewm_params, trainable_params.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass

from affectverse_ds.config import AffectVerseConfig, ConfigError, load_config


@dataclass
class ParamCounts:
    """Parameter counts of a configured model (the memory planner and this CLI both read these)."""

    frozen: int  # every thinker parameter
    lm: int  # the language model without its embedding table (FLOPs)
    audio: int
    vision: int
    lora: int
    ewm: int
    layers: int  # decoder layers
    largest_layer: int  # parameters of the largest decoder layer (ZeRO-3 gather working set)

    @property
    def trainable(self) -> int:
        return self.lora + self.ewm


def count_parameters(cfg: AffectVerseConfig, thinker_config=None) -> ParamCounts:
    """The one parameter count, on the meta device (nothing is allocated): the thinker of ``thinker_config``
    (default: ``backbone.arch_config``, else ``backbone.path``), LoRA from the shapes of the layers it wraps
    (r x (in + out) each, what PEFT adds; a test checks it against the assembled model) and the EWM.
    Imports torch and transformers only when called, so the planner's CLI stays light."""
    import torch

    from affectverse_ds.model.backbone import Thinker, language_model_lora_pattern, read_thinker_config
    from affectverse_ds.model.ewm import EmotionWorldModule

    if thinker_config is None:
        thinker_config = read_thinker_config(cfg.backbone.arch_config or cfg.backbone.path)
    with torch.device("meta"):
        thinker = Thinker(thinker_config)
        ewm = EmotionWorldModule(cfg.ewm, thinker_config.text_config.hidden_size) if cfg.ewm.enabled else None
    inner = thinker.model
    lm = inner.language_model
    pattern = re.compile(language_model_lora_pattern(cfg.lora.target_modules))
    lora = 0
    if cfg.lora.enabled:
        for name, module in thinker.named_modules():
            if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name):
                lora += cfg.lora.r * (module.in_features + module.out_features)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return ParamCounts(
        frozen=n(thinker), lm=n(lm) - lm.embed_tokens.weight.numel(),
        audio=n(inner.audio_tower), vision=n(inner.visual), lora=lora, ewm=n(ewm) if ewm is not None else 0,
        layers=thinker_config.text_config.num_hidden_layers, largest_layer=max(n(layer) for layer in lm.layers),
    )


def parameter_summary(cfg: AffectVerseConfig) -> dict[str, int]:
    """Counts for ``cfg`` with the thinker architecture of ``backbone.arch_config`` (or ``backbone.path``)."""
    counts = count_parameters(cfg)
    return {"backbone_params": counts.frozen, "lora_params": counts.lora, "ewm_params": counts.ewm,
            "trainable_params": counts.trainable}


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
