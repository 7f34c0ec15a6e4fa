"""Train AffectVerse (LoRA + EWM) with DeepSpeed.

    deepspeed launch/train.py --ds ds_configs/zero2.json --config launch/configs/NAME.yaml [key=value ...]
    torchrun --nproc_per_node N launch/train.py --ds ... --config ...
    srun python launch/train.py --ds ... --config ...        (inside an sbatch allocation)
    deepspeed --module affectverse_ds.launch.train --ds ... --config ...   (an installed package, no clone)
"""
from __future__ import annotations

import argparse
import sys

import torch

from affectverse_ds import preflight
from affectverse_ds.config import ConfigError, load_config
from affectverse_ds.data.loader import LoaderError
from affectverse_ds.model.backbone import BackboneError
from affectverse_ds.train.checkpoint import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ds", required=True, help="DeepSpeed engine-policy JSON (ds_configs/zero2.json)")
    parser.add_argument("--config", required=True, help="AffectVerse YAML config (launch/configs/*.yaml)")
    parser.add_argument("--resume", default=None, help="'auto' (latest complete checkpoint) or a checkpoint folder")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="with --resume: apply this changed config key (e.g. train.lr) from the resumed step "
                             "instead of refusing the resume; recorded in the run's config_changes.jsonl")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        preflight.for_training(cfg)  # seconds, before the model is built
        from affectverse_ds.train.loop import Trainer

        result = Trainer(cfg, args.ds, resume=args.resume, allow_change=tuple(args.allow_change)).train()
        from affectverse_ds import distributed as dist

        # every rank waits for the others, then the group goes down before the process exits: exiting under a
        # live group aborted 1 in ~58 finished 2-rank runs ("terminate called without an active exception",
        # exit 250) after their last checkpoint. Every stop reason reaches here on every rank at the same step.
        dist.shutdown()
    except (ConfigError, BackboneError, LoaderError, CheckpointError, FileNotFoundError, preflight.PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as err:  # one line with the way out, not a CUDA allocator dump
        first = str(err).splitlines()[0] if str(err) else "out of memory"
        print(f"error: {first}; lower train.micro_batch (raising train.grad_accum keeps the global batch) or set "
              f"backbone.gradient_checkpointing=true; `python -m affectverse_ds.memory_plan --config "
              f"{args.config}` predicts the peak", file=sys.stderr)
        return 3
    if result.stop_reason == "nonfinite":
        print(f"error: {result.message}", file=sys.stderr)
        return 4
    if not result.finished:
        why = {"signal": "a signal (SIGTERM/SIGUSR1)", "stop_after_steps": "train.stop_after_steps"}[result.stop_reason]
        print(f"stopped by {why} at step {result.steps}; resume with --resume auto", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
