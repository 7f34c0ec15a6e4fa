"""The EWM imagines from the past alone: perturbing only future tokens leaves every context state it reads
bit-identical and changes its targets; the literal Algorithm 1 (context_source=full) fails that check."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.model import injection as inj
from affectverse_ds.model.affect_model import build_model

KAPPA = 0.5
SPECS = [dict(video=6, audio=60), dict(video=8, audio=80), dict(video=6, audio=0)]


def _future_columns(model, batch) -> torch.Tensor:
    """(B, L) bool: the A/V tokens the keep mask drops at KAPPA (video: whole temporal groups)."""
    mask = batch["attention_mask"]
    regions = inj.find_regions(batch["input_ids"], mask, batch.get("video_grid_thw"),
                               batch.get("video_second_per_grid"), model.core.model.spatial_merge_size,
                               model.core.config.position_id_per_seconds)
    future = torch.zeros_like(mask, dtype=torch.bool)
    for i, regs in enumerate(regions):
        for r, k in zip(regs, inj.keep_counts(KAPPA, regs)):
            future[i, r.start + k:r.end] = True
    return future


def _ewm_reads(model, batch, perturb: torch.Tensor | None, run: str):
    """The EWM's inputs (hidden, lengths, split) for one training forward or one imagination trace.

    ``perturb``: (B, L) columns whose embeddings (tower outputs) get noise before any decoder pass.
    """
    seen = {}
    hook = model.ewm.register_forward_pre_hook(lambda mod, args: seen.update(args=args))
    embed = model._embed
    if perturb is not None:
        def noisy(b):
            e = embed(b)
            noise = torch.randn(e.shape, generator=torch.Generator().manual_seed(1))
            return e + 3.0 * noise * perturb[..., None]
        model._embed = noisy
    try:
        if run == "train":
            model.train()(batch, kappa=KAPPA, generator=torch.Generator().manual_seed(0))
            hidden, lengths, split = (seen["args"][k] for k in range(3))
        else:
            trace = model.eval().imagination_trace(batch, KAPPA)
            return trace.z, trace.lengths, trace.split
    finally:
        hook.remove()
        model._embed = embed
    return hidden, lengths, split


def _context_and_targets(reads):
    hidden, lengths, split = reads
    ctx, tgt = [], []
    for m in range(2):
        for i in range(hidden[m].shape[0]):
            ctx.append(hidden[m][i, :int(split[m][i])])
            tgt.append(hidden[m][i, int(split[m][i]):int(lengths[m][i])])
    return ctx, tgt


def _check(model, batch, run):
    """(every context state bit-identical, every non-empty target changed) under a future-only perturbation."""
    future = _future_columns(model, batch)
    assert int(future.sum()) > 0
    with torch.no_grad():
        ctx0, tgt0 = _context_and_targets(_ewm_reads(model, batch, None, run))
        ctx1, tgt1 = _context_and_targets(_ewm_reads(model, batch, future, run))
    assert sum(c.shape[0] for c in ctx0) > 0 and sum(t.shape[0] for t in tgt0) > 0
    same_ctx = all(torch.equal(a, b) for a, b in zip(ctx0, ctx1))
    moved_tgt = all(not torch.allclose(a, b) for a, b in zip(tgt0, tgt1) if a.shape[0])
    return same_ctx, moved_tgt


@pytest.mark.parametrize("run,share", [("train", True), ("train", False), ("trace", False)])
def test_future_perturbation_leaves_the_context_untouched_and_moves_the_targets(tiny_cfg, batch_maker, run, share):
    batch = batch_maker.make(SPECS)
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu")
    model.share_prefix, model.min_shared_prefix = share, 1
    same_ctx, moved_tgt = _check(model, batch, run)
    assert same_ctx, "a context state of the EWM changed when only future tokens changed"
    assert moved_tgt, "a target did not change when its future tokens changed"


@pytest.mark.parametrize("run,share", [("train", True), ("train", False), ("trace", False)])
def test_the_literal_full_pass_context_fails_the_check(tiny_cfg, batch_maker, run, share):
    """Known to bite: with the context from the full-observation pass, audio-past states see the future video."""
    batch = batch_maker.make(SPECS)
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0", "ewm.context_source=full"), "cpu")
    model.share_prefix, model.min_shared_prefix = share, 1
    same_ctx, moved_tgt = _check(model, batch, run)
    assert moved_tgt and not same_ctx


def test_future_video_frames_do_not_reach_the_context_through_the_vision_tower(tiny_cfg, batch_maker):
    """Raw pixels of the dropped temporal groups changed: the (per-group) vision tower keeps the past intact."""
    batch = batch_maker.make(SPECS[:2])
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu")
    with torch.no_grad():
        ctx0, tgt0 = _context_and_targets(_ewm_reads(model, batch, None, "train"))
        pixels = batch["pixel_values_videos"].clone()
        start = 0
        for t, h, w in batch["video_grid_thw"].tolist():
            keep = max(int(KAPPA * t), 1)
            pixels[start + keep * h * w:start + t * h * w] += 3.0  # the later temporal groups only
            start += t * h * w
        ctx1, tgt1 = _context_and_targets(_ewm_reads(model, dict(batch, pixel_values_videos=pixels), None, "train"))
    assert all(torch.equal(a, b) for a, b in zip(ctx0, ctx1))
    n_video = len(SPECS[:2])
    assert all(not torch.allclose(a, b) for a, b in zip(tgt0[:n_video], tgt1[:n_video]))


def test_split_with_two_audio_regions_puts_every_kept_token_before_every_dropped_one():
    """The EWM reads each modality as [past ; future]: with two regions, both regions' kept tokens come first."""
    from affectverse_ds.data.batch import AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID
    from affectverse_ds.model.affect_model import AffectVerseModel, _Setup

    ids = [5, 6, AUDIO_BOS_ID] + [AUDIO_TOKEN_ID] * 10 + [AUDIO_EOS_ID, 7, AUDIO_BOS_ID] + [AUDIO_TOKEN_ID] * 6
    ids += [AUDIO_EOS_ID, 8, 9]
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    answer = torch.tensor([len(ids)])
    regions = inj.find_regions(input_ids, mask, None, None)
    plan0 = inj.build_plan(regions, mask, None, answer, None, torch.zeros(1, dtype=torch.long), stop_after_av=True)
    s = _Setup(torch.zeros(1, len(ids), 4), torch.tensor([0.5], dtype=torch.float64), True)
    s.plan0 = plan0
    s.lengths = [(plan0.kind == k).sum(1) for k in (inj.VIDEO, inj.AUDIO)]
    AffectVerseModel._split_ewm(None, s, regions, mask, answer, torch.tensor([0.5], dtype=torch.float64))
    assert s.split[1].tolist() == [8] and s.split[0].tolist() == [0]
    cols = plan0.orig_col[0, s.order[1][0, :16]].tolist()
    first, second = list(range(3, 13)), list(range(16, 22))
    assert cols == first[:5] + second[:3] + first[5:] + second[3:]
    assert plan0.orig_col[0, s.order[1][0]].tolist()[:8] == s.plan_past.orig_col[0, s.past_cols[1][0, :8]].tolist()
