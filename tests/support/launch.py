"""The launchers: their environment variables (for tests that run as a world of one) and the entry points."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]

# the variables torchrun, DeepSpeed's launcher and Slurm set: a test without a launcher must not inherit them
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_JOB_NODELIST")



def launch_module(name: str) -> ModuleType:
    """``launch/{name}.py`` (an entry point, not a package module) loaded by path, a fresh module each call so a
    test's monkeypatching stays its own."""
    spec = importlib.util.spec_from_file_location(f"_launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
