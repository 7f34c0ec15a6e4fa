"""The kept video fraction of training's keep mask, floor of Eq. 11 against the rounded rule, side by side.

    python bench/kept_fraction.py artifacts/ewm_evidence/raw_base_720_72_0/affectdyn-process [--draws 200000]

Video is cut in whole 2-frame groups (``model.ewm.split_points``), so what a training step keeps of a clip's
video is the group count it rounds kappa x groups to, divided by the groups. This draws kappa ~ U[kappa_min, 1)
(the default config's) and a training clip of affectdyn at random, and prints, per rule, the kept fraction's
mean (kappa's is the target), the share of draws under kappa_min and keeping the whole video, and the mean
distance from kappa. Groups per clip: the 3 FPS frames of its ``n_frames`` at 25 FPS, in 2-frame groups (an odd
last frame makes a group, as the processor pads it).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing

import torch  # noqa: E402

from affectverse_ds.config import EWMConfig  # noqa: E402
from affectverse_ds.model.ewm import split_points  # noqa: E402

SOURCE_FPS, SAMPLE_FPS = 25, 3.0


def groups_of_train_clips(process_dir: Path) -> torch.Tensor:
    clips = json.loads((process_dir / "affectdyn.json").read_text())["clips"]
    frames = [math.ceil(c["n_frames"] / SOURCE_FPS * SAMPLE_FPS) for c in clips if c["split"] == "train"]
    return torch.tensor([math.ceil(f / 2) for f in frames])


def floor_rule(kappa: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Eq. 11 as written, the rule before issue 24: floor(kappa x groups), at least one group."""
    return torch.minimum(torch.floor(kappa * groups.double()).long().clamp(min=1), groups)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("process_dir", type=Path)
    p.add_argument("--draws", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    groups = groups_of_train_clips(args.process_dir)
    g = torch.Generator().manual_seed(args.seed)
    lo = EWMConfig().kappa_min
    drawn = groups[torch.randint(0, len(groups), (args.draws,), generator=g)]
    kappa = lo + (1.0 - lo) * torch.rand(args.draws, generator=g, dtype=torch.float64)
    print(f"{len(groups)} training clips, {int(groups.min())}-{int(groups.max())} video groups; "
          f"{args.draws} draws of kappa ~ U[{lo}, 1): mean {float(kappa.mean()):.3f}")
    print("| rule | kept mean | kept < kappa_min | whole video | mean abs(kept - kappa) | max kept |")
    print("|---|---|---|---|---|---|")
    for name, rule in (("floor (before)", floor_rule), ("nearest (split_points)", split_points)):
        kept = rule(kappa, drawn).double() / drawn
        print(f"| {name} | {float(kept.mean()):.3f} | {100 * float((kept < lo).double().mean()):.1f}% | "
              f"{100 * float((kept == 1).double().mean()):.1f}% | {float((kept - kappa).abs().mean()):.3f} | "
              f"{float(kept.max()):.3f} |")


if __name__ == "__main__":
    main()
