"""Fixtures of the benchmark-reading tests.

The real MER-UniBench label files live in ``tests/reference/merbench/`` (carried by the repository,
via ``shared_data`` from ``tests/conftest.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from affectverse_ds.benchmarks import get_benchmark
from data_prep.make_fixtures import FIXTURE_FILE, make_fixture


@pytest.fixture(scope="session")
def merbench(shared_data: Path) -> Path:
    path = shared_data / "merbench"
    assert path.is_dir(), f"reference label files missing from the checkout: {path}"
    return path


def fixture_record(root: Path) -> dict:
    """The ``fixture.json`` make_fixture wrote: benchmark, layout, split, items with their inject kind."""
    return json.loads((root / FIXTURE_FILE).read_text(encoding="utf-8"))


@pytest.fixture
def scan_fixture(tmp_path: Path) -> Callable:
    """``scan_fixture(benchmark, layout, **make_fixture_kwargs) -> (items, record, root)``:
    write a fixture under ``tmp_path / f"{benchmark}-{layout}"`` and scan its split back."""

    def scan(benchmark: str, layout: str, **kwargs):
        root = make_fixture(benchmark, layout, tmp_path / f"{benchmark}-{layout}", **kwargs)
        record = fixture_record(root)
        return get_benchmark(benchmark).scanners[layout](root, record["split"]), record, root

    return scan
