"""The launcher environment, for tests that run as a world of one."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# the variables torchrun, DeepSpeed's launcher and Slurm set: a test without a launcher must not inherit them
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_JOB_NODELIST")


@contextmanager
def without_launcher() -> Iterator[None]:
    """This process without the launcher variables; the whole environment is restored afterwards."""
    saved = dict(os.environ)
    for key in LAUNCHER_VARS:
        os.environ.pop(key, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
