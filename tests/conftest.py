"""Fixtures shared by every test package: the reference data location and the embedded tiny backbone."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Reference data (label files, wheels, AffectGPT outputs): $AFFECTVERSE_SHARED_DATA or ../shared/data."""
    return Path(os.environ.get("AFFECTVERSE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set AFFECTVERSE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """The embedded tiny backbone, written once per test session by the real tool."""
    from affectverse_ds.tools.make_tiny_backbone import make_tiny_backbone

    return make_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), seed=0)
