"""Fixtures of the evaluation tests: the reference data, and a tiny self-made set of wheel tables.

``shared_data`` (``tests/reference/``, carried by the repository) comes from ``tests/conftest.py``;
a test needing one file under it asks ``reference(relative path)``. ``emotion_wheel/...`` resolves
to the wheels shipped with the package. A missing path fails the test (the data is in the clone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from tests.support.wheels import write_tiny_wheels


def require(path: Path) -> Path:
    """The path, failing the calling test when it is absent (reference data is part of the repository)."""
    assert path.exists(), f"reference data missing from the checkout: {path}"
    return path


@pytest.fixture(scope="session")
def reference(shared_data: Path) -> Callable[[str], Path]:
    """``reference("merbench/...")`` -> that path under ``tests/reference``; ``reference("emotion_wheel")``
    -> the package's wheels (``affectverse_ds/eval/wheels``)."""
    from affectverse_ds.eval.wheel import PACKAGED_WHEEL_DIR

    def resolve(relative: str) -> Path:
        head, _, rest = relative.partition("/")
        root = PACKAGED_WHEEL_DIR if head == "emotion_wheel" else shared_data / head
        return require(root / rest if rest else root)

    return resolve


@pytest.fixture(scope="session")
def wheel_dir(reference) -> Path:
    return reference("emotion_wheel")


@pytest.fixture(scope="session")
def real_wheels(wheel_dir: Path):
    from affectverse_ds.eval.wheel import load_wheels
    return load_wheels(wheel_dir)


@pytest.fixture(scope="session")
def tiny_wheel_dir(tmp_path_factory) -> Path:
    return write_tiny_wheels(tmp_path_factory.mktemp("tiny_wheels"))


@pytest.fixture(scope="session")
def tiny_wheels(tiny_wheel_dir: Path):
    from affectverse_ds.eval.wheel import load_wheels
    return load_wheels(tiny_wheel_dir)


def write_label_npz(path: Path, member: str, entries: dict[str, dict]) -> Path:
    """A MER-UniBench style label file: ``{member: {name: {'emo':..., 'val':...}}}`` pickled in an npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{member: np.array(entries, dtype=object)})
    return path


@pytest.fixture(scope="session")
def label_npz() -> Callable[[Path, str, dict], Path]:
    """The :func:`write_label_npz` writer, for tests that need a small label file."""
    return write_label_npz
