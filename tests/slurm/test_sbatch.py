"""The sbatch scripts under a real single-host Slurm (Debian's slurm-wlm + munge, started here).

GPU requests in the scripts are overridden on the sbatch command line (command-line options win
over #SBATCH lines), exactly as a user on a CPU partition would do.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
START = REPO / "tests" / "slurm" / "start_cluster.sh"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(START), str(state)], capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"no Slurm on this machine: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, SLURM_CONF=proc.stdout.strip().splitlines()[-1], OMP_NUM_THREADS="1",
               PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    yield env
    subprocess.run(["bash", str(START), "--stop", str(state)], timeout=60)


def sbatch(env, script: str, *args: str, opts: tuple[str, ...] = (), timeout: int = 600) -> None:
    cmd = ["sbatch", "--wait", *opts, script, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, slurm):
    """Shards built by the SLURM array script, two array tasks (train and test of MELD)."""
    from data_prep.make_fixtures import make_fixture

    base = tmp_path_factory.mktemp("slurm_data")
    root = make_fixture("meld", "unibench", base / "raw_train", n=8, split="train", seed=2)
    root_test = make_fixture("meld", "unibench", base / "raw_test", n=4, split="test", seed=3)
    listing = base / "shards.list"
    listing.write_text(f"# benchmark layout root split\nmeld unibench {root} train\n\nmeld unibench {root_test} test\n")
    out = base / "shards"
    (REPO / "logs").mkdir(exist_ok=True)
    sbatch(slurm, "launch/slurm/build_shards_array.sbatch", str(listing), str(out), "--shard-max-count", "4",
           opts=("--array=1-2", "--cpus-per-task=1", "--mem=1G", f"--output={base}/build-%A_%a.out"))
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(v for k, v in sizes.items() if "-train-" in k) == 8
    assert sum(v for k, v in sizes.items() if "-test-" in k) == 4
    return out


def test_training_script_trains_a_few_steps(slurm, shards, tiny_backbone_dir, tmp_path):
    run = tmp_path / "run"
    sbatch(slurm, "launch/slurm/train.sbatch", "launch/configs/tiny.yaml",
           f"data.shard_dir={shards}", f"backbone.path={tiny_backbone_dir}", f"train.out_dir={run}",
           "train.max_steps=2", "train.save_every=2", "data.num_workers=0",
           opts=("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
                 "--mem=0", f"--output={tmp_path}/slurm-%j.out"))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    digests = json.loads((run / "final_state.json").read_text())["trainable_sha256_per_rank"]
    assert len(digests) == 2 and len(set(digests)) == 1  # two srun tasks formed one world
    assert (run / "checkpoints" / "step_000002" / "COMPLETE").is_file()
