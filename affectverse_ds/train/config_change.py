"""Resuming with a config that differs from the checkpoint's: which changes apply, which need naming, which never can.

A resumed run used to take the new ``config.yaml`` at its word while the restored optimizer and scheduler
went on with the old values (``train.lr`` changed: the old learning rate continued, the new one was recorded).
Now every key that differs is classed before anything is loaded:

- bookkeeping (:data:`FREE`): where and how often to save or log, loader workers, evaluation settings; they do
  not change what the next step computes, so they apply silently;
- shapes or layout of saved state (:data:`SHAPES`): the checkpoint cannot be loaded into the new model or
  engine at all, named or not; refused in one line instead of DeepSpeed's ``size mismatch``;
- everything else: refused in one line listing each difference, unless the user names the key
  (``--allow-change train.lr``); a named change applies from the resumed step and is recorded in the run
  folder (``config_changes.jsonl``). Keys that decide the data order or the batch (:data:`EPOCH_BOUNDARY`)
  apply only when the checkpoint sits at an epoch boundary: mid-epoch, the saved data position counts
  micro-batches of the old order and size.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FREE = frozenset({
    "train.out_dir", "train.save_every", "train.save_each_epoch", "train.keep_last", "train.log_every",
    "train.stop_after_steps", "train.max_nonfinite_steps", "data.num_workers",
    "backbone.attn_implementation", "backbone.gradient_checkpointing",
    "eval.wheel_dir", "eval.modalities", "eval.keep_ratios", "eval.mode",
    "eval.max_new_tokens", "eval.batch_size",
})
SHAPES = frozenset({
    "lora.enabled", "lora.r", "lora.target_modules", "ewm.enabled", "ewm.d_w", "ewm.n_future", "ewm.rollout_steps",
    "ewm.layers", "ewm.heads", "ewm.ffn_mult", "ewm.n_belief_base", "ewm.mama_layers", "ewm.n_types",
    "ewm.belief", "ewm.boundary_residual", "backbone.arch_config", "train.precision", "backbone.dtype",
})
EPOCH_BOUNDARY = frozenset({
    "train.micro_batch", "train.grad_accum", "train.global_batch", "train.seed", "data.shard_dir",
    "data.train_benchmarks", "data.shuffle_buffer",
})
CHANGES_FILE = "config_changes.jsonl"


class ConfigChangeError(ValueError):
    """A resume whose config differs from the checkpoint's in a way that cannot apply; one line."""


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (one level: a config's leaves are section fields)."""
    return {f"{section}.{key}": value for section, fields in tree.items() if isinstance(fields, dict)
            for key, value in fields.items()}


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _listing(diff: dict[str, tuple[Any, Any]], keys) -> str:
    return ", ".join(f"{k} {_short(diff[k][0])} -> {_short(diff[k][1])}" for k in sorted(keys))


def differences(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs; a key the checkpoint does not record (saved by an older version) is not compared."""
    old, now = flatten(saved), flatten(new)
    return {k: (old[k], now[k]) for k in sorted(now) if k in old and old[k] != now[k]}


def check_before_load(saved: dict[str, Any], new: dict[str, Any], allowed: set[str]) -> dict[str, tuple[Any, Any]]:
    """The named changes to apply; raises ConfigChangeError for shape changes and for unnamed ones."""
    diff = differences(saved, new)
    unknown = sorted(set(allowed) - set(flatten(new)))
    if unknown:
        raise ConfigChangeError(f"--allow-change {unknown[0]}: not a config key")
    shapes = [k for k in diff if k in SHAPES]
    if shapes:
        raise ConfigChangeError(f"resume: {_listing(diff, shapes)} changes the shapes or layout of the saved state, "
                                f"which no resume can load; restore the value or start a new run (another "
                                f"train.out_dir)")
    unnamed = [k for k in diff if k not in FREE and k not in allowed]
    if unnamed:
        raise ConfigChangeError(f"resume: the config differs from the checkpoint's: {_listing(diff, unnamed)}; "
                                f"restore the value, or name it with --allow-change KEY to apply it from here on")
    return {k: v for k, v in diff.items() if k in allowed}


def check_position(changes: dict[str, tuple[Any, Any]], micro_in_epoch: int, step: int) -> None:
    """Data-order and batch keys apply only from an epoch boundary (``micro_in_epoch == 0``)."""
    mid = [k for k in changes if k in EPOCH_BOUNDARY]
    if mid and micro_in_epoch != 0:
        raise ConfigChangeError(f"resume: {_listing(changes, mid)} cannot apply mid-epoch (the checkpoint at step "
                                f"{step} is {micro_in_epoch} micro-batches into its epoch): resume from an epoch-end "
                                f"checkpoint (train.save_each_epoch) or restore the value")


def apply_optimizer(scheduler, changes: dict[str, tuple[Any, Any]], lr: float) -> None:
    """Put the new config's rates into the state DeepSpeed restored (it restores the old ones).

    The schedule's shape (warm-up, length) is already the new config's: the scheduler was built from it and
    its state holds only the step and the peak rates. Here the peak rate becomes ``lr`` and the current
    step's rate is recomputed from it; a changed ``train.weight_decay`` replaces the decayed groups' value."""
    if "train.weight_decay" in changes:
        old, new = changes["train.weight_decay"]
        if not old:
            raise ConfigChangeError("--allow-change train.weight_decay: the checkpoint was trained without decay, "
                                    "so its decayed and undecayed groups cannot be told apart; start a new run")
        for group in scheduler.optimizer.param_groups:
            if group["weight_decay"] == old:
                group["weight_decay"] = new
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, fn in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = lr * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def record(out_dir: Path, step: int, checkpoint: Path, changes: dict[str, tuple[Any, Any]]) -> str:
    """Append the applied changes to the run folder's record; returns the line to print."""
    entry = {"time": time.time(), "step": step, "checkpoint": str(checkpoint),
             "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}
    with open(Path(out_dir) / CHANGES_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, default=str) + "\n")
    return f"resume: applying the named changes from step {step}: {_listing(changes, changes)}"
