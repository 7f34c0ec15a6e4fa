"""Resume safety through DeepSpeed's launcher on 2 CPU ranks (the fast tests cover the pure functions).

One run saves steps 1 and 2. Then: a pickled payload planted in step 2's model states (its integrity record
forged to match) makes ``--resume auto`` fall back to step 1, say so, and never run the payload; and an explicit
``--resume`` of a folder without its marker is refused with the same one line on both ranks.
"""
from __future__ import annotations

import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from affectverse_ds.train import checkpoint as ckpt
from affectverse_ds.distributed import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _launch(args: list[str], log: Path) -> int:
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "launch/train.py",
           "--ds", "ds_configs/zero2.json", "--config", "launch/configs/tiny.yaml", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    with open(log, "w") as f:
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory, tiny_backbone_dir) -> tuple[Path, list[str]]:
    from affectverse_ds.data.shards import ShardLimits, build_shards
    from data_prep.make_fixtures import make_fixture

    base = tmp_path_factory.mktemp("resume_safety")
    root = make_fixture("meld", "unibench", base / "raw", n=8, split="train", seed=1)
    shards = base / "shards"
    build_shards("meld", "unibench", root, "train", shards, workers=1, limits=ShardLimits(max_count=4), progress=False)
    run = base / "run"
    args = [f"data.shard_dir={shards}", f"backbone.path={tiny_backbone_dir}", f"train.out_dir={run}",
            "train.max_steps=2", "train.save_every=1", "train.keep_last=3", "train.log_every=1",
            "data.num_workers=1", "train.micro_batch=2", "train.grad_accum=1"]
    code = _launch(args, base / "first.txt")
    assert code == 0, (base / "first.txt").read_text()[-3000:]
    assert [p.name for p in ckpt.complete_checkpoints(run / "checkpoints")] == ["step_000001", "step_000002"]
    return run, args


def test_a_planted_payload_is_skipped_with_a_fallback_and_never_runs(two_checkpoints, tmp_path):
    run, args = two_checkpoints
    work = tmp_path / "run"
    shutil.copytree(run, work)
    args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={work}" for a in args]
    newest = work / "checkpoints" / "step_000002"
    states = newest / "mp_rank_00_model_states.pt"
    original = torch.load(states, weights_only=True)
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({**original, "payload": _Payload(marker)}, states)
    ckpt.write_integrity(newest)  # an attacker can rewrite the record too: the weights-only scan still refuses
    log = tmp_path / "resume.txt"
    code = _launch(["--resume", "auto", *args], log)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert not marker.exists()
    assert "resume auto: step_000002 is damaged" in text and "io.open" in text and "falling back" in text
    assert f"resumed from {work / 'checkpoints' / 'step_000001'} at step 1" in text
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows][-1] == 2  # step 2 trained again from step 1
    assert ckpt.verify_checkpoint(newest) is None  # and saved again, cleanly, over the damaged folder


def test_an_explicit_folder_without_its_marker_is_refused_on_every_rank(two_checkpoints, tmp_path):
    run, args = two_checkpoints
    work = tmp_path / "run"
    shutil.copytree(run, work)
    args = [a if not a.startswith("train.out_dir=") else f"train.out_dir={work}" for a in args]
    folder = work / "checkpoints" / "step_000001"
    (folder / ckpt.COMPLETE).unlink()
    log = tmp_path / "refused.txt"
    code = _launch(["--resume", str(folder), *args], log)
    text = log.read_text()
    assert code != 0
    line = f"error: --resume {folder}: no COMPLETE marker (an interrupted save)"
    assert text.count(line) == 2, text[-3000:]  # the same one line from both ranks
    assert "Traceback" not in text
