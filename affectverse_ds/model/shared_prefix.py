"""The shared-prefix optimisation: the columns all passes of a training step share are computed once.

In training, the sequences agree on their first tokens (system prompt, video past ...), and with the keep
mask the past pass is exactly the second pass's A/V prefix (it precedes every belief token):
:func:`shared_passes` computes the second pass up to the shortest past prefix of the batch once, with grad,
takes the context states from it (continuing longer rows without grad), runs the full-observation rest from
its cache cropped where the sequences diverge, and finishes the second pass from the cache. Exact under
causal attention (``tests/model/test_affect_model.py`` compares it with the separate passes of
``ewm_context.ewm_states``); off with gradient checkpointing (transformers drops the cache there),
``source_layer != -1`` or ``AffectVerseModel.share_prefix = False``.

``decoder`` below is the composed model's ``_decoder`` (``thinker_io.decode`` on its thinker).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from affectverse_ds.config import EWMConfig
from affectverse_ds.model import injection as inj
from affectverse_ds.model import thinker_io
from affectverse_ds.model.ewm import EmotionWorldModule, EWMOutput
from affectverse_ds.model.ewm_context import run_ewm
from affectverse_ds.model.step_plan import StepPlan, context_grad, prepared, uses_past_pass


def prefix_columns(s: StepPlan, e: EWMConfig, enabled: bool, min_prefix: int) -> tuple[int, int]:
    """(n0, head): columns at the start where the full-observation (n0) and the past sequence (head)
    hold the same tokens as the modified sequence, over the whole batch (host only; may left-pad the plans,
    see :func:`align_past`).

    Causal attention makes their states identical there, so the step computes ``head`` columns of the
    modified sequence once (with grad) and the other passes continue from that KV cache. (0, 0) when
    sharing does not apply (``enabled`` False: switched off, no EWM or gradient checkpointing) or below
    ``min_prefix`` columns, where the extra decoder call costs more than it saves.
    """
    if not (enabled and s.training and s.needs_states and e.source_layer == -1):
        return 0, 0
    has_av = (s.lengths[0] + s.lengths[1]) > 0
    past = uses_past_pass(s, e)
    if past:
        align_past(s, has_av)
    n0 = agreement(s.plan0, s.plan, has_av)
    head = n0
    if past:  # the head's states serve both passes: none past the columns where the past pass still agrees
        head = agreement(s.plan_past, s.plan, has_av)
        n0 = min(n0, head)
    return (n0, head) if head >= min_prefix else (0, 0)


def align_past(s: StepPlan, has_av: torch.Tensor) -> None:
    """Where every row's past sequence is its modified sequence's prefix (the keep mask is on), pad each
    row on the left so all past prefixes end at one column: the shared head then holds every context
    state, and no extra pass is needed for the longer rows (the rows' lengths vary mostly by A/V, so
    the batch hardly widens)."""
    n = s.plan_past.attention_mask.sum(1)
    prefix_ok = agreement_rows(s.plan_past, s.plan) >= n
    if not bool((prefix_ok | ~has_av).all()):
        return
    offsets = torch.where(has_av, int(n[has_av].max()) - n, 0) if bool(has_av.any()) else torch.zeros_like(n)
    if not int(offsets.max()):
        return
    s.plan, s.plan0, s.plan_past = (inj.shift_rows(p, offsets) for p in (s.plan, s.plan0, s.plan_past))
    # entries past a row's count are padding (masked by the lengths): only keep them in range
    s.order = [(o + offsets[:, None]).clamp(max=s.plan0.source.shape[1] - 1) for o in s.order]
    s.past_cols = [(c + offsets[:, None]).clamp(max=s.plan_past.source.shape[1] - 1) for c in s.past_cols]


def shared_passes(decoder: Callable, ewm: EmotionWorldModule, s: StepPlan, e: EWMConfig, n0: int, head: int,
                  generator) -> tuple[torch.Tensor, EWMOutput]:
    """All passes with the common prefix computed once: (hidden of the modified sequence, EWM output)."""
    dev = s.embeds.device
    grad = context_grad(s, e)
    cols = slice(0, head)
    x_a = inj.gather_embeddings(s.plan, s.embeds, None, cols)
    mask2 = s.plan.attention_mask.to(dev)
    h_a, cache = decoder(x_a, mask2[:, cols], s.plan.position_ids[:, :, cols].to(dev), cache=thinker_io.new_cache())
    past = uses_past_pass(s, e)
    h_ctx = h_a if grad else h_a.detach()
    # full-observation states: the shared n0 columns, then the rest of plan0 from the cache cropped there
    h0 = (h_a if grad and not past else h_a.detach())[:, :n0]
    if s.plan0.source.shape[1] > n0:
        h0 = torch.cat([h0, _continue(decoder, s, s.plan0, cache, n0, mask2, grad and not past)], dim=1)
    h_past = None
    if past:  # the past pass is the modified sequence's prefix; longer rows continue past `head`
        h_past = h_ctx
        if s.plan_past.source.shape[1] > head:
            h_past = torch.cat([h_past, _continue(decoder, s, s.plan_past, cache, head, mask2, grad)], dim=1)
    ewm_out = run_ewm(ewm, s, h0, h_past, generator)
    tail = prepared(s, ewm_out, slice(head, None))
    h_b, _ = decoder(tail.inputs_embeds, tail.attention_mask, tail.position_ids, cache=cache)
    return torch.cat([h_a, h_b], dim=1), ewm_out


def _continue(decoder: Callable, s: StepPlan, plan: inj.SequencePlan, cache, n: int, mask2: torch.Tensor,
              grad: bool) -> torch.Tensor:
    """States of ``plan`` from column ``n`` on, after the first ``n`` columns of the modified sequence's cache.

    Runs on a copy of the cache cropped to ``n`` (the modified sequence's own cache is left as it is).
    """
    dev = s.embeds.device
    rest = slice(n, None)
    with torch.set_grad_enabled(grad):
        x = inj.gather_embeddings(plan, s.embeds, None, rest)
        mask = torch.cat([mask2[:, :n], plan.attention_mask[:, rest].to(dev)], dim=1)
        h, _ = decoder(x, mask, plan.position_ids[:, :, rest].to(dev), cache=thinker_io.cache_copy(cache, n, not grad))
    return h


def agreement_rows(pa: inj.SequencePlan, p2: inj.SequencePlan) -> torch.Tensor:
    """(B,) leading columns where ``pa`` and ``p2`` hold the same tokens (or padding in both)."""
    n = min(pa.source.shape[1], p2.source.shape[1])
    real_a, real2 = pa.attention_mask[:, :n].bool(), p2.attention_mask[:, :n].bool()
    same = (pa.orig_col[:, :n] == p2.orig_col[:, :n]) & (p2.orig_col[:, :n] >= 0) & real2 & real_a
    return (same | (~real_a & ~real2)).long().cumprod(1).sum(1)


def agreement(pa: inj.SequencePlan, p2: inj.SequencePlan, has_av: torch.Tensor) -> int:
    """Leading columns where ``pa`` holds the same tokens as ``p2`` in every row with A/V (``pa``'s rows
    without A/V are never read), at most the narrower plan's width."""
    n = min(pa.source.shape[1], p2.source.shape[1])
    return int(torch.where(has_av, agreement_rows(pa, p2), n).min())
