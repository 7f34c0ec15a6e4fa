"""The EWM imagines from the past alone: perturbing only future tokens leaves every context state it reads
bit-identical and changes its targets; the literal Algorithm 1 (context_source=full) fails that check.

The raw-input tests below (issue 24) perturb future pixels, future waveform samples and the future's length
instead of tower outputs, and check the context states, the belief tokens and the answer logits of the
training step, of evaluation at keep < 1 and of the imagination trace bit for bit. Before issue 24 the past
pass gathered its A/V tokens from towers run on the whole clip, and the waveform and length perturbations
failed there (every audio context state, the beliefs and the answer logits moved); the pixel one passed, since
the vision tower attends within each 2-frame group."""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.model import injection as inj
from affectverse_ds.model import thinker_io
from affectverse_ds.model.affect_model import build_model
from tests.support.models import nonzero_lora_b

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
            keep = max(int(KAPPA * t + 0.5), 1)
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


# ----------------------------------------------------------------------------- raw inputs (issue 24)
# The tests above perturb tower *outputs* at future columns. These perturb the raw inputs (future pixels, future
# waveform samples, a longer future) and compare, bit for bit, every EWM context state, the belief tokens and the
# answer logits of the truncated pass, in training (both step paths), at evaluation with keep < 1 and in the
# imagination trace. What they cannot cover is decided before the batch exists: the loader's frame sampling and
# audio cap read the whole clip (see model/past_inputs.py); the hand-built batches keep seconds-per-grid fixed.

RAW_SPECS = [dict(video=6, audio=60), dict(video=8, audio=80), dict(video=6, audio=0), dict(video=0, audio=70)]


def _raw_samples(batch_maker, kappa: float, perturb: str) -> list[dict]:
    """The samples of RAW_SPECS, raw inputs perturbed after the keep point at ``kappa`` (``perturb``: "none",
    "pixels", "waveform"), or ("length") clips twice as long whose first half is the unperturbed clip."""
    from affectverse_ds.data import processing

    out = []
    for i, spec in enumerate(RAW_SPECS):
        s = batch_maker.sample(**spec, seed=i)
        if perturb == "length":
            long = batch_maker.sample(video=2 * spec["video"], audio=2 * spec["audio"], seed=100 + i)
            if "grid" in s:
                long["pixels"][:s["pixels"].shape[0]] = s["pixels"]
            if "wave" in s:
                long["wave"][:s["wave"].shape[0]] = s["wave"]
                long["features"] = batch_maker.features(long["wave"])
            s = long
        elif perturb == "pixels" and "grid" in s:
            t, h, w = s["grid"]
            kept = max(int(kappa * t + 0.5), 1) * h * w  # whole temporal groups, as the keep mask cuts them
            s["pixels"][kept:] += 3.0
        elif perturb == "waveform" and "wave" in s:
            cut = processing.audio_keep_samples(kappa, s["wave"].shape[0])
            s["wave"][cut:] = s["wave"][cut:] * 20.0 + 0.3  # a louder ending: the whole clip's log-mel floor rises
            s["features"] = batch_maker.features(s["wave"])
        out.append(s)
    return out


def _hooked(model, run):
    """Run ``run()`` with the EWM's inputs and output recorded: (run's result, args, output)."""
    seen = {}
    pre = model.ewm.register_forward_pre_hook(lambda mod, args: seen.update(args=args))
    post = model.ewm.register_forward_hook(lambda mod, args, out: seen.update(out=out))
    try:
        result = run()
    finally:
        pre.remove()
        post.remove()
    return result, seen.get("args"), seen.get("out")


def _reads(model, batch, kappa: float) -> dict[str, list[torch.Tensor]]:
    """What must be a function of the observed past alone, per run: context states (hidden[:T_p]), belief
    tokens (the first n_belief), answer logits; and the imagination trace's past tokens and rollout."""
    out = {}
    b = batch["input_ids"].shape[0]
    with torch.no_grad():
        for name, run in (
            ("train", lambda: model.train()(batch, kappa=kappa, generator=torch.Generator().manual_seed(0)).logits),
            ("eval", lambda: thinker_io.lm_head(model.core, model.eval()._prefill(batch, kappa)[1])),
        ):
            logits, (hidden, _lengths, split, *_), ewm_out = _hooked(model, run)
            out[f"{name}_context"] = [hidden[m][i, :int(split[m][i])] for m in range(2) for i in range(b)]
            out[f"{name}_beliefs"] = [ewm_out.beliefs[i, :int(ewm_out.n_belief[i])] for i in range(b)]
            out[f"{name}_answer_logits"] = [logits]
        trace = model.eval().imagination_trace(batch, kappa)
        out["trace_context"] = [trace.z[m][i, :int(trace.split[m][i])] for m in range(2) for i in range(b)]
        out["trace_imagined"] = [trace.imagined[m][i] for m in range(2) for i in range(b) if trace.use[m][i]]
    return out


def _changed(model, batch_maker, perturb: str) -> list[str]:
    """The reads (name[index]) that are not bit-identical after ``perturb``; a longer future is read at
    kappa / 2 so the cut stays at the same sample and frame group."""
    base = _reads(model, batch_maker.collate(_raw_samples(batch_maker, KAPPA, "none")), KAPPA)
    kappa = KAPPA / 2 if perturb == "length" else KAPPA
    moved = _reads(model, batch_maker.collate(_raw_samples(batch_maker, KAPPA, perturb)), kappa)
    assert sum(t.numel() for v in base.values() for t in v) > 0
    return [f"{k}[{j}]" for k in base for j, (a, c) in enumerate(zip(base[k], moved[k]))
            if a.shape != c.shape or not torch.equal(a, c)]


@pytest.mark.parametrize("perturb", ["pixels", "waveform", "length"])
@pytest.mark.parametrize("share", [True, False])
def test_raw_future_inputs_leave_every_past_state_bit_identical(tiny_cfg, batch_maker, perturb, share):
    """context_source=past: the observed past is a function of the cut clip alone, raw inputs included."""
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0"), "cpu")
    nonzero_lora_b(model)  # LoRA in the forward, so the answer logits see every path the states take
    model.share_prefix, model.min_shared_prefix = share, 1
    assert _changed(model, batch_maker, perturb) == []


@pytest.mark.parametrize("perturb", ["pixels", "waveform", "length"])
def test_raw_future_inputs_reach_the_past_under_the_literal_full_context(tiny_cfg, batch_maker, perturb):
    """context_source=full (Algorithm 1 read literally): the same perturbations reach the past states, so the
    check above can fail. Pixels reach it only through causal attention (audio after video); the waveform and a
    longer clip also through the whole-clip log-mel floor and the audio tower's 2 s chunks."""
    model = build_model(tiny_cfg("ewm.modality_dropout=0.0", "ewm.context_source=full"), "cpu")
    nonzero_lora_b(model)
    changed = _changed(model, batch_maker, perturb)
    assert any(c.startswith("train_context") for c in changed)
    assert any(c.startswith("train_beliefs") for c in changed) and "train_answer_logits[0]" in changed
    if perturb != "pixels":  # the (per-group) vision tower keeps kept video tokens; audio tokens move
        assert "eval_answer_logits[0]" in changed and any(c.startswith("trace_context") for c in changed)
