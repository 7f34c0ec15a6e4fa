"""The model tests' fixtures: hand-built batches (:mod:`tests.support.batches`) and the tiny model's config."""
from __future__ import annotations

import pytest

from affectverse_ds.config import load_config
from affectverse_ds.model.backbone import load_tokenizer
from tests.support.batches import PATCH_DIM, BatchMaker, audio_tokens  # noqa: F401 (model tests import them here)


@pytest.fixture(scope="session")
def batch_maker(tiny_backbone_dir) -> BatchMaker:
    return BatchMaker(load_tokenizer(tiny_backbone_dir))


def tiny_config(backbone_dir, *overrides: str):
    """The tiny preset's EWM sizes (launch/configs/tiny.yaml) without depending on that file's other sections."""
    base = [f"backbone.path={backbone_dir}", "backbone.dtype=float32", "backbone.attn_implementation=sdpa",
            "lora.dropout=0.0", "ewm.d_w=64", "ewm.heads=4", "ewm.n_future=4", "ewm.rollout_steps=3"]
    return load_config(None, base + list(overrides))


@pytest.fixture(scope="session")
def tiny_cfg(tiny_backbone_dir):
    return lambda *overrides: tiny_config(tiny_backbone_dir, *overrides)
