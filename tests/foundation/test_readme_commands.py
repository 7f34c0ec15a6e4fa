"""Every command in the README's ``bash`` blocks is one the code accepts as printed.

- training (``deepspeed``/``torchrun`` ... ``launch/train.py``): the entry point's own argument parser takes the
  words, the config loads with the overrides, the DeepSpeed policy exists, and preflight's world-size check
  passes on the ranks the command asks for;
- evaluation by path: the entry point's parser takes the words (the ``...`` shorthand line excepted);
- ``python -m MODULE``: the module runs, and every ``--flag`` the README gives is one its ``--help`` lists;
  the two commands that need only the repository (the 7B parameter summary and the reference scoring) are run,
  and the summary's output is the one the README prints beneath it;
- Slurm training lines: tests/slurm/test_printed_commands.py checks them; other scripts and files exist.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from affectverse_ds import preflight
from affectverse_ds.config import load_config
from affectverse_ds.launch import evaluate as evaluate_entry
from affectverse_ds.launch import train as train_entry

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
RUN = {"make", "python", "deepspeed", "torchrun", "sbatch", "bash", ".venv/bin/python"}


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] in RUN, f"README command with an unknown program: {line}"
                commands.append(shlex.join(words))
    return commands


COMMANDS = readme_commands()


def kind(command: str) -> str:
    words = shlex.split(command)
    if words[0] in ("deepspeed", "torchrun"):
        return "train" if "launch/train.py" in words else "evaluate"
    if words[:2] == ["python", "launch/evaluate.py"]:
        return "evaluate"
    if words[0] == "python" and words[1] == "-m":
        return "module"
    return words[0]


def after(words: list[str], script: str) -> list[str]:
    return words[words.index(script) + 1:]


def test_the_commands_are_found():
    kinds = [kind(c) for c in COMMANDS]
    assert kinds.count("train") >= 3 and kinds.count("module") >= 5 and "make" in kinds, COMMANDS


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "train"])
def test_training_commands_parse_load_and_pass_preflight(command):
    words = shlex.split(command)
    ranks = int(words[words.index("--num_gpus" if words[0] == "deepspeed" else "--nproc_per_node") + 1])
    args = train_entry.parse_args(after(words, "launch/train.py"))
    assert (REPO / args.ds).is_file(), args.ds
    cfg = load_config(REPO / args.config, args.overrides)
    assert preflight.world_size(cfg.train, ranks) is None, (command, preflight.world_size(cfg.train, ranks))


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "evaluate" and "..." not in c.split()])
def test_evaluation_commands_parse(command):
    args = evaluate_entry.parse_args(after(shlex.split(command), "launch/evaluate.py"))
    load_config(REPO / args.config, args.overrides)


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "module"])
def test_module_commands_take_their_flags(command):
    words = shlex.split(command)
    module, rest = words[2], words[3:]
    leading = []  # a subcommand (``unibench score``) comes before the first flag
    while rest and not rest[0].startswith("-") and re.fullmatch(r"[a-z_]+", rest[0]):
        leading.append(rest.pop(0))
    proc = subprocess.run([sys.executable, "-m", module, *leading, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (command, proc.stderr[-2000:])
    flags = {w.split("=")[0] for w in rest if w.startswith("--")}
    missing = [f for f in sorted(flags) if not re.search(rf"{re.escape(f)}\b", proc.stdout)]
    assert not missing, (command, missing)


def test_the_parameter_summary_prints_what_the_readme_shows():
    command = next(c for c in COMMANDS if "affectverse_ds.model.summary" in c)
    shown = json.loads(re.search(r"model\.summary --config \S+\n# (\{.*\})", README).group(1))
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: measured[k] for k in shown} == shown


def test_the_reference_scoring_command_runs():
    command = next(c for c in COMMANDS if "unibench score" in c)
    proc = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) in ("bash", "sbatch", ".venv/bin/python")])
def test_scripts_exist(command):
    script = next(w for w in shlex.split(command)[1:] if not w.startswith("-"))
    assert (REPO / script).is_file(), command


def test_make_targets_exist():
    for command in (c for c in COMMANDS if kind(c) == "make"):
        proc = subprocess.run(["make", "-n", *shlex.split(command)[1:]], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, (command, proc.stderr)
