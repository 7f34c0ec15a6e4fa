"""The launcher environment, for tests that run as a world of one."""
from __future__ import annotations

# the variables torchrun, DeepSpeed's launcher and Slurm set: a test without a launcher must not inherit them
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_JOB_NODELIST")

