"""The end of a training run without the model, for launching many times (tests/train/test_exit_teardown.py).

``launch/train.py``'s own ``main`` runs, with the trainer replaced by :class:`EndOfRun`: the process group started
by the package (``distributed.init_distributed``, gloo on CPU), this rank's real train loader with its worker
process, the collectives each step makes between batches, the loop left at the plan's last step (before the loader
ran dry, as a finished run leaves it) and its iterator closed as ``train/loop.py`` closes it, the gathers of the
last save and the rank check; then ``main``'s ``distributed.shutdown()`` and the interpreter's exit.

Checked on every rank: the loader's workers are gone before the group is torn down, and at interpreter exit (an
``atexit`` handler, which runs before finalization) no process group or worker is left. A live gloo group meets
finalization with its worker threads running: the race that aborted 1 in ~58 runs ("terminate called without an
active exception", pytorch/pytorch #190489). The race is too rare to see in a few launches; a group left alive is
seen in every one.

    torchrun --nproc_per_node 2 tests/train/end_of_run.py --ds ds_configs/zero2.json --config CONFIG [key=value ...]
    ... [--no-shutdown]   the order before the fix: the group left to interpreter exit
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import sys

import torch

from affectverse_ds import distributed as dist
from affectverse_ds.data.loader import build_train_loader
from affectverse_ds.launch import train as launch_train
from affectverse_ds.model.backbone import load_tokenizer
from affectverse_ds.train import loop

STEPS = 2  # batches per rank before the "last step"; the loader holds more, so its worker is still busy
LEFT_ALIVE = 70  # exit status of a rank that reached interpreter exit with a process group or loader worker alive


def _nothing_left_at_exit() -> None:
    left = (["a process group"] if dist.is_initialized() else []) + [str(p) for p in multiprocessing.active_children()]
    if left:
        print(f"at interpreter exit: {', '.join(left)} still alive", file=sys.stderr, flush=True)
        os._exit(LEFT_ALIVE)  # before finalization meets them


class EndOfRun:
    """Stands in for ``train.loop.Trainer``: same constructor, same collectives, no model or engine."""

    def __init__(self, cfg, ds_path, resume=None, allow_change=()) -> None:
        self.cfg = cfg
        self.info = dist.dist_info_from_env()
        dist.pick_device(self.info)
        dist.init_distributed(self.info)
        atexit.register(_nothing_left_at_exit)  # registered after torch's and DeepSpeed's handlers: runs before them
        self.tokenizer = load_tokenizer(cfg.backbone.path)

    def train(self) -> loop.TrainResult:
        loader = build_train_loader(self.cfg, self.tokenizer, rank=self.info.rank, world=self.info.world_size, epoch=0)
        assert len(loader) > STEPS, f"the plan has {len(loader)} batches per rank; the test needs more than {STEPS}"
        batches = iter(loader)
        for step, _batch in enumerate(batches, 1):
            dist.all_reduce(torch.tensor([float(step)], dtype=torch.float64))  # the step's scalars
            dist.all_gather_object(loader.stats.skipped)  # data/skipped_samples
            if step == STEPS:
                break
        batches.close()  # as train/loop.py does after its loop
        alive = multiprocessing.active_children()
        if alive:
            raise RuntimeError(f"rank {self.info.rank}: loader workers still alive after the loop: {alive}")
        dist.all_gather_object(torch.Generator().get_state())  # the last save's generator states
        dist.all_gather_object("digest")  # the rank check
        return loop.TrainResult(steps=STEPS)


if __name__ == "__main__":
    if "--no-shutdown" in sys.argv:
        sys.argv.remove("--no-shutdown")
        dist.shutdown = lambda: None
    loop.Trainer = EndOfRun  # launch.train.main imports it at call time
    sys.exit(launch_train.main())
