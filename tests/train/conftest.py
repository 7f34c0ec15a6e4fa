"""Fixtures of the training tests: small two-benchmark shards and a single-process world (no launcher)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from affectverse_ds.tools.fixture_shards import write_test_shards
from tests.support.launch import LAUNCHER_VARS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def two_benchmark_shards(tmp_path_factory) -> Path:
    """meld (4 + 3 samples) and cmumosi (3 samples): with weights {meld: 1, cmumosi: 2}, 13 samples per epoch."""
    write = write_test_shards
    out = tmp_path_factory.mktemp("loop_shards")
    write(out, [4, 3], seconds=1.0, frame_size=56)
    write(out, [3], benchmark="cmumosi", seconds=1.0, frame_size=56)
    return out


@pytest.fixture(scope="module")
def single_process():
    """This process as a world of one, as a user gets it without a launcher; the process group and the
    launcher variables DeepSpeed sets are removed afterwards, so later tests see a clean process."""
    saved = dict(os.environ)
    for key in LAUNCHER_VARS:
        os.environ.pop(key, None)
    yield
    from affectverse_ds import distributed as dist

    dist.shutdown()  # DeepSpeed's teardown too: the next module's engine must not meet its stale cached groups
    os.environ.clear()
    os.environ.update(saved)
