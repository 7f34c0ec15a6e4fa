"""Fixtures of the adversarial corpus tests: the tiny backbone's tokenizer and feature extractor."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer(tiny_backbone_dir):
    from affectverse_ds.model.backbone import load_tokenizer

    return load_tokenizer(tiny_backbone_dir)


@pytest.fixture(scope="session")
def extractor(tiny_backbone_dir):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(tiny_backbone_dir)
