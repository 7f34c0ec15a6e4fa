"""The shards the GPU kit carries: affectdyn clips (4-8 s, the paper's 3 FPS and 224 px) through the real builder.

    python bench/gpu/make_kit_data.py [--kit .gpukit] [--train 16] [--test 4]

Built here because the lent machine has no PyAV (bench/gpu/kit.txt) to decode clips; it only reads shards.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from affectverse_ds.benchmarks.affectdyn_gen import make_affectdyn  # noqa: E402
from affectverse_ds.data.shards import ShardLimits, build_shards  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kit", default=str(REPO / ".gpukit"))
    p.add_argument("--train", type=int, default=16)
    p.add_argument("--test", type=int, default=4)
    args = p.parse_args(argv)
    out = Path(args.kit) / "shards"
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as raw:
        make_affectdyn(Path(raw), args.train, args.test, seed=0, workers=2)
        for split in ("train", "test"):
            report = build_shards("affectdyn", "unibench", Path(raw), split, out, workers=2,
                                  limits=ShardLimits(max_count=4), progress=False)
            print(f"{split}: {report.accepted} accepted, {report.rejected} rejected, {len(report.shards)} shards")
            if report.rejected:
                return 1
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"kit shards: {out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
