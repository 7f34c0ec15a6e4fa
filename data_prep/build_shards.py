"""Build WebDataset shards of one benchmark split (or of every split found with --all).

    python -m data_prep.build_shards --benchmark meld --layout unibench --root DATA --split test --out SHARDS --workers 8
    python -m data_prep.build_shards --all --layout unibench --root DATA --out SHARDS --workers 8
    python -m data_prep.build_shards --dry-run --all --layout unibench --root DATA

--dry-run scans without decoding and prints, per benchmark and split, the release shape recognised
(or the file looked for and what was found instead), items, media found/missing, rejections by
reason and subtitle text quality. --all prints the same table first. Either exits 1 when a
benchmark that is present under --root has a split that could not be read, naming it; a
benchmark that is simply absent is listed as absent.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from affectverse_ds import preflight
from affectverse_ds.data.media import DecodeConfig
from affectverse_ds.data.schema import MAX_DURATION, MAX_FRAMES
from affectverse_ds.data.shards import ShardLimits, build_all, build_shards, inspect_root, unreadable


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (0 or -3 workers or samples per shard was accepted, then every
    item failed with a misleading per-item reason)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: seconds kept per clip, > 0 and within what the shard contract can hold."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value <= MAX_DURATION):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, {MAX_DURATION:g}] (the shard "
                                         f"contract's {MAX_FRAMES} frames), not {text}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", help="registry name (not with --all)")
    p.add_argument("--layout", required=True, choices=["unibench", "official"])
    p.add_argument("--root", required=True, help="dataset root, as the benchmark's scanner expects it")
    p.add_argument("--split", help="split name (not with --all)")
    p.add_argument("--out", help="output folder for shards, sizes.json and manifest.parquet (not with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="scan and print the table; decode and write nothing")
    p.add_argument("--workers", type=positive_int, default=1, help="decoding processes (one decoder thread each)")
    p.add_argument("--resume", action="store_true", help="keep finished shards of an interrupted build")
    p.add_argument("--all", action="store_true", help="every benchmark and split found under --root")
    p.add_argument("--max-duration", type=positive_seconds, default=DecodeConfig.max_duration, help="seconds kept per clip")
    p.add_argument("--center-crop", action="store_true", help="centre square crop instead of direct resize")
    p.add_argument("--shard-max-count", type=positive_int, default=ShardLimits.max_count)
    p.add_argument("--shard-max-bytes", type=positive_int, default=ShardLimits.max_bytes)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (batch logs)")
    args = p.parse_args(argv)
    if args.all == bool(args.benchmark or args.split):
        p.error("give either --all or both --benchmark and --split")
    if not args.all and not (args.benchmark and args.split) and not (args.dry_run and args.benchmark):
        p.error("--benchmark and --split go together")
    if not args.dry_run and not args.out:
        p.error("--out is required (except with --dry-run)")
    return args


def print_scan(scans) -> int:
    """Print the scan table; 1 (naming them) when a present benchmark has an unreadable split, else 0."""
    for scan in scans:
        print(scan.line(), flush=True)
    bad = unreadable(scans)
    for scan in bad:
        print(f"error: {scan.benchmark}/{scan.split} is present under the root but could not be read: {scan.detail}",
              file=sys.stderr)
    return 1 if bad else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    preflight.exit_on_failure(lambda: preflight.for_shard_build(args.root, args.out, args.benchmark))
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("error: interrupted; finished shards are kept, rerun with --resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (a fatal error is one line; bad items never get here)
        if os.environ.get("AFFECTVERSE_TRACEBACK"):
            raise
        msg = " ".join(str(err).split()) or "(no message)"
        print(f"error: {type(err).__name__}: {msg} (AFFECTVERSE_TRACEBACK=1 shows the traceback; "
              f"--resume keeps finished shards)", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    kwargs = dict(
        workers=args.workers, resume=args.resume, progress=not args.no_progress,
        cfg=DecodeConfig(max_duration=args.max_duration, center_crop=args.center_crop),
        limits=ShardLimits(max_count=args.shard_max_count, max_bytes=args.shard_max_bytes),
    )
    if args.dry_run:
        scans = inspect_root(args.layout, args.root, None if args.all else [args.benchmark])
        if args.split:
            scans = [s for s in scans if s.split in (args.split, "*")]
        status = print_scan(scans)
        if not args.all and not any(s.status == "ok" for s in scans):  # the one benchmark asked for is not there
            print(f"error: {args.benchmark} not found under {args.root} for layout {args.layout}", file=sys.stderr)
            return 1
        return status
    status = 0
    if args.all:
        scans = inspect_root(args.layout, args.root)
        status = print_scan(scans)
        reports = build_all(args.layout, args.root, args.out, scans=scans, **kwargs)
    else:
        reports = [build_shards(args.benchmark, args.layout, args.root, args.split, args.out, **kwargs)]
    for r in reports:
        text = ", ".join(f"{k} {v}" for k, v in r.record.get("text_quality", {}).items()) or "clean"
        print(f"{r.benchmark}/{r.split}: {r.items} items, {r.accepted} accepted, {r.rejected} rejected, "
              f"{len(r.shards)} shards; subtitles: {text}; shape: {'; '.join(r.record.get('shapes', [])) or '-'}")
    if not reports:
        print(f"no benchmark split found under {args.root} for layout {args.layout}", file=sys.stderr)
        return 1
    if status:
        names = sorted({f"{s.benchmark}/{s.split}" for s in unreadable(scans)})
        print(f"error: not built: {', '.join(names)} (present but unreadable; see above)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
