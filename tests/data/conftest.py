"""Fixtures of the data tests: the shard writers (:mod:`affectverse_ds.tools.fixture_shards`) and clip writers
(:mod:`tests.support.clips`) as fixtures.

``make_clip`` / ``make_wav``: tiny clips encoded with PyAV for test_media.py and test_shards.py (the shard
writer's tests); ``write_shards`` / ``make_record``: valid test shards and samples in the shard contract.
"""
from __future__ import annotations

import pytest

from affectverse_ds.tools.fixture_shards import sample_record, write_test_shards
from tests.support.clips import write_clip, write_wav


@pytest.fixture
def write_shards():
    """:func:`write_test_shards`, for tests (importing from a conftest is fragile under --import-mode=importlib)."""
    return write_test_shards


@pytest.fixture
def make_record():
    """:func:`sample_record`: one fixture sample's tar members, without writing a shard."""
    return sample_record


@pytest.fixture
def make_clip(tmp_path):
    """``make_clip(name, **write_clip kwargs) -> Path`` in the test's tmp folder."""
    return lambda name, **kw: write_clip(tmp_path / name, **kw)


@pytest.fixture
def make_wav(tmp_path):
    """``make_wav(name, seconds, rate=16000) -> Path`` in the test's tmp folder."""
    return lambda name, seconds, rate=16000: write_wav(tmp_path / name, seconds, rate)
