"""The Slurm training commands as printed (the script's header and the README) pass preflight's world-size
check on the allocation they ask for: ``--nodes`` x the script's 8 tasks per node. The real single-host Slurm
of test_sbatch.py cannot give two nodes, so the multi-node command is checked by its preflight arithmetic."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from affectverse_ds import preflight
from affectverse_ds.config import load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "slurm" / "train.sbatch"


def printed_commands() -> list[str]:
    # the header's lines end in "[key=value ...]" (the user's own additions) and a "# 8 GPUs" comment
    header = [line.lstrip("# ").split("#")[0].replace("[key=value ...]", "") for line in SCRIPT.read_text().splitlines()
              if line.startswith("#   sbatch")]
    readme = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("sbatch ")
              and "train.sbatch" in line]
    return header + readme


def ranks_and_overrides(command: str) -> tuple[int, str, list[str]]:
    words = shlex.split(command)
    nodes = next((int(w.split("=")[1]) for w in words if w.startswith("--nodes=")), 1)
    per_node = int(re.search(r"#SBATCH --ntasks-per-node=(\d+)", SCRIPT.read_text()).group(1))
    script_at = next(i for i, w in enumerate(words) if w.endswith("train.sbatch"))
    config, *overrides = words[script_at + 1:]
    return nodes * per_node, config, overrides


def test_the_printed_commands_are_found():
    commands = printed_commands()
    assert len(commands) >= 4, commands  # one node and four nodes, in the script and in the README
    assert any("--nodes=4" in c for c in commands)


@pytest.mark.parametrize("command", printed_commands())
def test_each_printed_command_makes_the_global_batch(command):
    world, config, overrides = ranks_and_overrides(command)
    cfg = load_config(REPO / config, overrides)
    assert preflight.world_size(cfg.train, world) is None, (command, preflight.world_size(cfg.train, world))


def test_the_old_multi_node_command_is_refused_with_the_arithmetic():
    cfg = load_config(REPO / "launch" / "configs" / "affectverse_7b.yaml")
    problem = preflight.world_size(cfg.train, 32)
    assert problem and "256" in problem and "32" in problem
