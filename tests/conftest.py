"""Fixtures shared by every test package: the reference data the tests carry and the embedded tiny backbone."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # tests.support: the helpers the test packages share (conftests are not importable)
    sys.path.insert(0, str(REPO))
# Real label files, transcripts and AffectGPT's released outputs, carried by the repository
# (tests/reference/README.md names their sources; Apache-2.0, a LICENSE in each folder).
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data folder (``merbench/``, ``affectgpt_outputs/``); it is part of the repository,
    so its absence is a broken checkout and fails the test instead of skipping it."""
    assert (REFERENCE_DIR / "merbench").is_dir(), f"reference data missing from the checkout: {REFERENCE_DIR}"
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """The embedded tiny backbone, written once per test session by the real tool."""
    from affectverse_ds.tools.make_tiny_backbone import make_tiny_backbone

    return make_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_backbone_dir):
    from affectverse_ds.model.backbone import load_tokenizer

    return load_tokenizer(tiny_backbone_dir)


@pytest.fixture(scope="session")
def extractor(tiny_backbone_dir):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(tiny_backbone_dir)
