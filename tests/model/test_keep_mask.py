"""Property tests of the keep mask, belief insertion and repadding (pure host bookkeeping, no model)."""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from affectverse_ds.data.batch import (
    AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID, IGNORE_INDEX, PAD_TOKEN_ID, VIDEO_TOKEN_ID, VISION_BOS_ID,
    VISION_EOS_ID,
)
from affectverse_ds.model import injection as inj

sample_st = st.fixed_dictionaries({
    "prefix": st.integers(1, 6),  # system prompt text
    "video": st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))),  # grid t, h/2, w/2
    "audio": st.one_of(st.none(), st.integers(1, 30)),
    "text": st.integers(0, 6),  # subtitle/question + "<|im_start|>assistant\n"
    "answer": st.integers(0, 4),  # answer tokens (0: an inference prompt)
    "kappa": st.floats(0.05, 1.0),
})


def _synth(samples, pad):
    """input ids laid out as the chat template does: text, [bos VIDEO* eos], [bos AUDIO* eos], text, answer."""
    rows, labels, answers, grids = [], [], [], []
    for s in samples:
        ids = list(range(10, 10 + s["prefix"]))
        if s["video"]:
            t, h, w = s["video"]
            ids += [VISION_BOS_ID] + [VIDEO_TOKEN_ID] * (t * h * w) + [VISION_EOS_ID]
            grids.append([t, 2 * h, 2 * w])
        if s["audio"]:
            ids += [AUDIO_BOS_ID] + [AUDIO_TOKEN_ID] * s["audio"] + [AUDIO_EOS_ID]
        ids += list(range(100, 100 + s["text"]))
        answers.append(len(ids))
        lab = [IGNORE_INDEX] * len(ids) + list(range(1000, 1000 + s["answer"]))
        ids += list(range(1000, 1000 + s["answer"]))
        rows.append(ids)
        labels.append(lab)
    width = max(map(len, rows))
    b = len(rows)
    ids_t = torch.full((b, width), PAD_TOKEN_ID)
    mask = torch.zeros((b, width), dtype=torch.long)
    lab_t = torch.full((b, width), IGNORE_INDEX)
    ans = torch.zeros(b, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        off = 0 if pad == "right" else width - len(r)
        ids_t[i, off:off + len(r)] = torch.tensor(r)
        mask[i, off:off + len(r)] = 1
        lab_t[i, off:off + len(r)] = torch.tensor(lab)
        ans[i] = off + answers[i]
    grid = torch.tensor(grids) if grids else None
    spg = torch.full((len(grids),), 0.5) if grids else None
    return ids_t, mask, lab_t, ans, grid, spg


@settings(max_examples=150, deadline=None)
@given(samples=st.lists(sample_st, min_size=1, max_size=4), pad=st.sampled_from(["right", "left"]),
       positions=st.sampled_from([1, 2]), n_base=st.integers(1, 5))
def test_keep_mask_and_belief_placement(samples, pad, positions, n_base):
    ids, mask, labels, answer, grid, spg = _synth(samples, pad)
    regions = inj.find_regions(ids, mask, grid, spg)
    kappa = torch.tensor([s["kappa"] for s in samples], dtype=torch.float64)
    n_mod = torch.tensor([(s["video"] is not None) + (s["audio"] is not None) for s in samples])
    n_belief = torch.where(n_mod == 2, 2 * n_base, torch.where(n_mod == 1, n_base, 0))
    plan = inj.build_plan(regions, mask, labels, answer, kappa, n_belief, positions, pad_side="right")
    for i, s in enumerate(samples):
        real = plan.attention_mask[i].bool()
        # right padded output: real tokens first, padding after, nothing else
        assert torch.equal(real, torch.arange(real.numel()) < int(real.sum()))
        kind, col, bidx = plan.kind[i][real], plan.orig_col[i][real], plan.belief_index[i][real]
        tok = col >= 0
        cols = col[tok]
        assert bool((cols[1:] > cols[:-1]).all())  # original order kept
        # labels travel with their tokens; belief tokens carry -100
        assert torch.equal(plan.labels[i][real][tok], labels[i, cols])
        assert bool((plan.labels[i][real][~tok] == IGNORE_INDEX).all())
        # every non-A/V real token survives (text, answer, labels are never dropped)
        src_real = torch.nonzero(mask[i]).squeeze(1)
        is_av = (ids[i, src_real] == VIDEO_TOKEN_ID) | (ids[i, src_real] == AUDIO_TOKEN_ID)
        assert set(src_real[~is_av].tolist()) <= set(cols.tolist())
        # audio keeps exactly its first max(1, kappa L rounded) tokens; video its first max(1, kappa t rounded)
        # whole temporal patch groups (h * w tokens each): never part of a group's spatial rows
        dropped = 0
        for r in regions[i]:
            n = r.end - r.start
            if r.kind == inj.VIDEO:
                t, h, w = s["video"]
                assert r.unit == h * w
                k = min(max(math.floor(s["kappa"] * t + 0.5), 1), t) * h * w
            else:
                assert r.unit == 1
                k = min(max(math.floor(s["kappa"] * n + 0.5), 1), n)
            kept = cols[(cols >= r.start) & (cols < r.end)]
            assert kept.tolist() == list(range(r.start, r.start + k))
            dropped += n - k
        assert int(plan.n_dropped[i]) == dropped
        # belief tokens: count, order, and the two boundaries
        nb = int(n_belief[i])
        where = torch.nonzero(kind == inj.BELIEF).squeeze(1)
        assert bidx[where].tolist() == list(range(nb))
        if nb == 0:
            continue
        first = nb // 2 if positions == 2 else 0
        ans_at = int(torch.nonzero(col == int(answer[i])).squeeze()) if s["answer"] else int(real.sum())
        assert where[first:].tolist() == list(range(ans_at - (nb - first), ans_at))
        if first:
            last_av = int(torch.nonzero((kind == inj.VIDEO) | (kind == inj.AUDIO)).max())
            assert where[:first].tolist() == list(range(last_av + 1, last_av + 1 + first))


@settings(max_examples=100, deadline=None)
@given(samples=st.lists(sample_st, min_size=1, max_size=3), pad=st.sampled_from(["right", "left"]))
def test_positions_of_a_truncated_sequence(samples, pad):
    """Text and belief ids are running max + 1; kept A/V tokens keep their (t, h, w) offsets in the region."""
    ids, mask, labels, answer, grid, spg = _synth(samples, pad)
    regions = inj.find_regions(ids, mask, grid, spg)
    kappa = torch.tensor([s["kappa"] for s in samples], dtype=torch.float64)
    n_belief = torch.full((len(samples),), 4)
    plan = inj.build_plan(regions, mask, labels, answer, kappa, n_belief, 2, pad_side=pad)
    for i in range(len(samples)):
        real = plan.attention_mask[i].bool()
        pos = plan.position_ids[:, i][:, real].numpy()  # (3, n)
        kind, col = plan.kind[i][real].numpy(), plan.orig_col[i][real].numpy()
        assert (plan.position_ids[:, i][:, ~real] == 1).all()
        for j in range(pos.shape[1]):
            if kind[j] in (inj.TEXT, inj.BELIEF):
                top = pos[:, :j].max() if j else -1
                assert (pos[:, j] == top + 1).all()
        for r in regions[i]:
            at = np.flatnonzero((col >= r.start) & (col < r.end))
            got = pos[:, at] - pos[:, at[:1]]
            assert (got == r.offsets[:, : len(at)]).all()
            before = pos[:, : at[0]].max() if at[0] else -1
            assert (pos[:, at[0]] == before + 1).all()  # the region starts at running max + 1
