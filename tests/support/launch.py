"""The launchers: their environment variables (for tests that run as a world of one) and the entry points."""
from __future__ import annotations

import importlib
from types import ModuleType

# the variables torchrun, DeepSpeed's launcher and Slurm set: a test without a launcher must not inherit them
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_JOB_NODELIST")


def launch_module(name: str) -> ModuleType:
    """The entry point ``affectverse_ds.launch.{name}`` (``train`` or ``evaluate``; ``launch/{name}.py`` in a clone
    only calls its ``main``). Tests patch it with ``monkeypatch``, which undoes each patch after the test."""
    return importlib.import_module(f"affectverse_ds.launch.{name}")
