"""The DeepSpeed seam: the engine policy JSON, batch sizes from the config, and ``deepspeed.initialize``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from affectverse_ds.config import AffectVerseConfig, ConfigError, check_world
from affectverse_ds.train.optim import build_scheduler, param_groups


def _find_auto(node: Any, path: str = "") -> str | None:
    if isinstance(node, dict):
        for k, v in node.items():
            hit = _find_auto(v, f"{path}.{k}" if path else k)
            if hit:
                return hit
    elif node == "auto":
        return path
    return None


# DeepSpeed keys that fill_ds_config writes from the AffectVerse config: the one place each is set
CONFIG_OWNED = {
    "train_batch_size": "train.global_batch (micro x accumulation x world)",
    "train_micro_batch_size_per_gpu": "train.micro_batch",
    "gradient_accumulation_steps": "train.grad_accum",
    "optimizer": "train.lr (with train.weight_decay; torch's AdamW)",
    "scheduler": "train.warmup_ratio (the cosine schedule with warm-up)",
    "bf16": "train.precision",
    "fp16": "train.precision",
    "gradient_clipping": "train.grad_clip",
}


def load_ds_config(path: str | Path) -> dict:
    """Read an engine-policy JSON; refuse ``"auto"`` (plain deepspeed.initialize drops it and bf16 falls off)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--ds: DeepSpeed config not found: {path}")
    ds = json.loads(path.read_text())
    ds.pop("_comment", None)
    hit = _find_auto(ds)
    if hit:
        raise ConfigError(f"{path}: {hit} is \"auto\"; write an explicit value (auto is silently dropped)")
    for key, owner in CONFIG_OWNED.items():
        if key in ds:
            # refused rather than overwritten: an edit here that silently did nothing misled users before
            raise ConfigError(f"{path}: {key} is set by the AffectVerse config ({owner}), not the engine policy: "
                              f"remove it from the JSON and set {owner.split(' ')[0]}")
    if (ds.get("checkpoint") or {}).get("load_universal"):
        raise ConfigError(f"{path}: checkpoint.load_universal reads checkpoints with pickle (weights_only=False); "
                          f"resume accepts weights-only checkpoints only")
    return ds


def fill_ds_config(ds: dict, cfg: AffectVerseConfig, world_size: int) -> dict:
    """Batch sizes, precision, optimizer and clipping from the AffectVerse config (checked against the world)."""
    t = cfg.train
    ds = json.loads(json.dumps(ds))
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = check_world(t, world_size)
    assert ds["train_batch_size"] == t.micro_batch * t.grad_accum * world_size
    # check_grad_overflow: ZeRO skips (on every rank alike) a step whose gradients are not finite; the loop's
    # non-finite policy (train/nonfinite.py) counts those skips. Explicit: DeepSpeed's default could change.
    ds["bf16"] = {"enabled": t.precision == "bf16", "check_grad_overflow": True}
    ds["gradient_clipping"] = t.grad_clip
    # torch's AdamW inside DeepSpeed: no JIT build of the fused CPU/GPU Adam on first use
    ds["optimizer"] = {"type": "AdamW", "params": {
        "lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": t.weight_decay, "torch_adam": True,
    }}
    return ds


def build_engine(model: torch.nn.Module, trainable: list[tuple[str, torch.nn.Parameter]], cfg: AffectVerseConfig,
                 ds_path: str | Path, world_size: int, total_steps: int, warmup_steps: int):
    """``deepspeed.initialize`` over the trainable parameters; returns (engine, optimizer, scheduler, ds_config)."""
    import deepspeed

    ds = fill_ds_config(load_ds_config(ds_path), cfg, world_size)
    if ds.get("zero_optimization", {}).get("stage") == 3:
        register_ewm_weights(model)
        # each module's forward gathers its weights with a collective: every rank must make the same calls
        model.uniform_calls = True
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, trainable, cfg.train.weight_decay),
        lr_scheduler=build_scheduler(total_steps, warmup_steps),
        config=ds,
    )
    install_weights_only_loading(engine)
    return engine, optimizer, scheduler, ds


def register_ewm_weights(model: torch.nn.Module) -> None:
    """ZeRO-3: every EWM weight is gathered for the whole of the EWM's forward (and its backward).

    The EWM's zero-touch term reads all of its weights inside its forward, also those of submodules that
    this batch does not run (the other MAMA, an absent modality's imagination module); ZeRO-3 gathers a
    weight only inside its own module's forward unless it is registered with the module that reads it.
    """
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter

    ewm = getattr(model, "ewm", None)
    if ewm is None:
        return
    for p in ewm.parameters():
        register_external_parameter(ewm, p)


_WEIGHTS_ONLY_ENGINE: type | None = None


def weights_only_checkpoint_engine() -> type:
    """DeepSpeed's torch checkpoint engine with ``load`` through ``checkpoint.safe_torch_load`` (weights-only).

    DeepSpeed routes every model/optimizer/ZeRO-shard read of ``load_checkpoint`` through
    ``engine.checkpoint_engine.load``, so replacing that one object is the seam: no global patch of torch.load."""
    global _WEIGHTS_ONLY_ENGINE
    if _WEIGHTS_ONLY_ENGINE is None:
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        from affectverse_ds.train.checkpoint import safe_torch_load

        class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
            def load(self, path: str, map_location=None):
                return safe_torch_load(path, map_location=map_location)

        _WEIGHTS_ONLY_ENGINE = WeightsOnlyCheckpointEngine
    return _WEIGHTS_ONLY_ENGINE


def install_weights_only_loading(engine) -> None:
    """Make ``engine.load_checkpoint`` weights-only; refuse engines that would read checkpoints another way."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise ConfigError(f"DeepSpeed checkpoint engine {type(current).__name__} loads with pickle; "
                          f"AffectVerse resumes through the weights-only torch engine only")
    if engine.load_universal_checkpoint():
        raise ConfigError("checkpoint.load_universal reads with pickle (weights_only=False); not supported")
    safe = weights_only_checkpoint_engine()(engine._config)  # same serialization settings as DeepSpeed's own
    engine.checkpoint_engine = safe
