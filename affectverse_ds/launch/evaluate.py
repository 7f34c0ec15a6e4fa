"""Evaluate checkpoints on the MER-UniBench test shards: scores, the paper's tables and plots.

    python launch/evaluate.py --checkpoint CKPT [CKPT ...] --config CONFIG [--benchmarks mer2023 meld ...] \
        [--modality avt,at,vt] [--keep-ratio 1.0,0.7,0.5,0.3,0.1] [--mode generate|rank] [--out results]
    torchrun --nproc_per_node N launch/evaluate.py ...       (work split over ranks, gathered on rank 0)
    torchrun --nproc_per_node N -m affectverse_ds.launch.evaluate ...   (an installed package, no clone)

CKPT is a ``step_NNNNNN/`` checkpoint folder or its ``export/`` folder; with several, the last is the
fixed checkpoint and best-per-benchmark rows are added, labelled.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from affectverse_ds import preflight
from affectverse_ds.config import ConfigError, load_config

OVERRIDE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")  # section.key=value, as load_config reads it


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of batches, not {value}")
    return value


def is_override(arg: str) -> bool:
    """``section.key=value`` that is not an existing path (a checkpoint folder may hold '=' in its name)."""
    return bool(OVERRIDE_RE.match(arg)) and not Path(arg).exists()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from affectverse_ds.eval.evaluate import parse_list

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, nargs="+", help="step_NNNNNN/ or export/ folders (last = fixed)")
    p.add_argument("--config", required=True, help="AffectVerse YAML config (data, eval and backbone location)")
    p.add_argument("--benchmarks", nargs="+", default=None, help="registry names (default: data.eval_benchmarks)")
    p.add_argument("--modality", type=parse_list, default=None, help="settings, e.g. avt,at,vt (default: eval.modalities)")
    p.add_argument("--keep-ratio", type=lambda s: parse_list(s, float), default=None,
                   help="keep ratios, e.g. 1.0,0.7,0.5,0.3,0.1 (default: eval.keep_ratios)")
    p.add_argument("--mode", choices=["generate", "rank"], default=None, help="default: eval.mode")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--max-batches", type=positive_int, default=None, help="at most this many batches per benchmark and setting per rank")
    p.add_argument("--no-probe", action="store_true", help="skip Table 8 / MAMA heatmaps (fewer forward passes)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = p.parse_args(argv)
    # "--checkpoint A B data.num_workers=0": argparse hands trailing overrides to --checkpoint
    args.overrides = [c for c in args.checkpoint if is_override(c)] + args.overrides
    args.checkpoint = [c for c in args.checkpoint if not is_override(c)]
    if not args.checkpoint:
        p.error("--checkpoint needs at least one folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from affectverse_ds.data.loader import LoaderError
    from affectverse_ds.eval.evaluate import run_evaluation
    from affectverse_ds.model.export import CheckpointError

    try:
        cfg = load_config(args.config, args.overrides)
        preflight.for_evaluation(cfg, args.out, args.benchmarks, args.checkpoint)  # seconds, before any model
        run_evaluation(args.config, args.checkpoint, overrides=args.overrides, benchmarks=args.benchmarks,
                       modalities=args.modality, keep_ratios=args.keep_ratio, mode=args.mode, out_dir=args.out,
                       max_batches=args.max_batches, probe=not args.no_probe)
    except (ConfigError, LoaderError, CheckpointError, FileNotFoundError, KeyError, preflight.PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
