"""Identity with nothing added, and our 3D M-RoPE ids == the thinker's own get_rope_index on unmodified sequences."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.config import BackboneConfig
from affectverse_ds.data.batch import IGNORE_INDEX
from affectverse_ds.model import injection as inj
from affectverse_ds.model.affect_model import build_model
from affectverse_ds.model.backbone import load_thinker

MIXED = [dict(video=4, audio=60), dict(video=2, audio=0, subtitle=None), dict(video=0, audio=40),
         dict(video=0, audio=0, answer="neutral and calm")]


def _bare_logits_at_labels(thinker, batch) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "pixel_values_videos", "video_grid_thw", "input_features",
            "feature_attention_mask")
    kwargs = {k: batch[k] for k in keys if k in batch}
    out = thinker(**kwargs, video_second_per_grid=batch.get("video_second_per_grid"))
    has = batch["labels"][:, 1:] != IGNORE_INDEX
    return out.logits[:, :-1][has]


@pytest.mark.parametrize("pad", ["right", "left"])
@pytest.mark.parametrize("train", [False, True])
def test_identity_with_ewm_off_and_lora_zero_init(tiny_cfg, batch_maker, tiny_backbone_dir, pad, train):
    cfg = tiny_cfg("ewm.enabled=false", "ewm.temporal_split=false")
    model = build_model(cfg, "cpu").train(train)
    bare = load_thinker(BackboneConfig(path=str(tiny_backbone_dir), dtype="float32", attn_implementation="sdpa"))
    batch = batch_maker.make(MIXED, pad=pad)
    with torch.no_grad():
        ours = model(batch).logits
        ref = _bare_logits_at_labels(bare, batch)
    assert ours.shape == ref.shape and ours.shape[0] > 0
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pad", ["right", "left"])
@pytest.mark.parametrize("specs", [MIXED, [dict(video=0, audio=60), dict(video=0, audio=20, subtitle=None)],
                                   [dict(video=0, audio=0), dict(video=0, audio=0, subtitle=None)],
                                   [dict(video=6, audio=0)]], ids=["mixed", "audio_only", "text_only", "video_only"])
def test_positions_equal_get_rope_index(tiny_backbone_dir, batch_maker, pad, specs):
    thinker = load_thinker(BackboneConfig(path=str(tiny_backbone_dir), dtype="float32"))
    batch = batch_maker.make(specs, pad=pad)
    fam = batch.get("feature_attention_mask")
    ref, _ = thinker.model.get_rope_index(
        batch["input_ids"], None, batch.get("video_grid_thw"), batch["attention_mask"], False,
        fam.sum(1) if fam is not None else None, batch.get("video_second_per_grid"))
    regions = inj.find_regions(batch["input_ids"], batch["attention_mask"], batch.get("video_grid_thw"),
                               batch.get("video_second_per_grid"))
    b = len(specs)
    plan = inj.build_plan(regions, batch["attention_mask"], batch["labels"], batch["answer_start"], None,
                          torch.zeros(b, dtype=torch.long), pad_side=pad)
    assert torch.equal(plan.attention_mask, batch["attention_mask"])  # unmodified: same layout
    assert torch.equal(plan.position_ids, ref)
    # a video with several temporal grids really exercises the (t, h, w) ids
    if "video_grid_thw" in batch:
        assert (plan.position_ids[0] != plan.position_ids[1]).any()
