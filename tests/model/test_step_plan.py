"""The per-step host plan (model/step_plan.py) and the shared prefix's host part, without a model.

Batches are hand-built token rows in the collator's contract; the only module built is the EWM's belief
count (Eq. 18). Seconds on any CPU.
"""
from __future__ import annotations

import pytest
import torch

from affectverse_ds.config import load_config
from affectverse_ds.data.batch import (
    AUDIO_BOS_ID, AUDIO_EOS_ID, AUDIO_TOKEN_ID, IGNORE_INDEX, IM_END_ID, IM_START_ID, PAD_TOKEN_ID, VIDEO_TOKEN_ID,
    VISION_BOS_ID, VISION_EOS_ID,
)
from affectverse_ds.model import injection as inj
from affectverse_ds.model import step_plan as sp
from affectverse_ds.model.ewm import EmotionWorldModule
from affectverse_ds.model.shared_prefix import agreement_rows, prefix_columns

GEOMETRY = (2, 25)  # spatial merge, position ids per second (Qwen2.5-Omni)
ROWS = [dict(groups=3, audio=10), dict(groups=2, audio=0), dict(groups=0, audio=7), dict(groups=0, audio=0)]


def _cfg(*overrides):
    return load_config(None, ["ewm.d_w=64", "ewm.heads=4", "ewm.n_future=4", "ewm.rollout_steps=3", *overrides])


def _belief_counts(cfg):
    return EmotionWorldModule(cfg.ewm, 32).belief_counts


def _batch(rows=ROWS, answer_len: int = 3, with_answer_start: bool = True) -> dict:
    """Right-padded rows: system text, [video], [audio], prompt text, answer (labelled) + <|im_end|>."""
    seqs, answers, grids = [], [], []
    for r in rows:
        ids = [IM_START_ID, 10, 11, IM_END_ID, IM_START_ID, 12]
        if r["groups"]:
            ids += [VISION_BOS_ID] + [VIDEO_TOKEN_ID] * (4 * r["groups"]) + [VISION_EOS_ID]  # 4 x 4 grid, merge 2
            grids.append([r["groups"], 4, 4])
        if r["audio"]:
            ids += [AUDIO_BOS_ID] + [AUDIO_TOKEN_ID] * r["audio"] + [AUDIO_EOS_ID]
        ids += [13, 14, IM_END_ID, IM_START_ID, 15]
        answers.append(len(ids))
        seqs.append(ids + [20 + k for k in range(answer_len)] + [IM_END_ID])
    width = max(map(len, seqs))
    b = len(seqs)
    batch = dict(input_ids=torch.full((b, width), PAD_TOKEN_ID), attention_mask=torch.zeros(b, width, dtype=torch.long),
                 labels=torch.full((b, width), IGNORE_INDEX))
    for i, (ids, a) in enumerate(zip(seqs, answers)):
        batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, :len(ids)] = 1
        batch["labels"][i, a:len(ids)] = torch.tensor(ids[a:])
    if with_answer_start:
        batch["answer_start"] = torch.tensor(answers)
    if grids:
        batch["video_grid_thw"] = torch.tensor(grids)
        batch["video_second_per_grid"] = torch.full((len(grids),), 2 / 3.0)
    return batch


def _plan(batch, cfg, kappa=None, seed=0, training=True, for_generation=False, ewm=True):
    return sp.plan_step(batch, cfg, kappa, torch.Generator().manual_seed(seed), training=training,
                        for_generation=for_generation, geometry=GEOMETRY,
                        belief_counts=_belief_counts(cfg) if ewm else None)


# ----------------------------------------------------------------------------- kappa, dropout, answer


def test_kappa_is_given_drawn_in_training_or_one():
    e = _cfg().ewm
    assert sp.draw_kappa(3, 0.5, True, e, None).tolist() == [0.5] * 3
    drawn = sp.draw_kappa(1000, None, True, e, torch.Generator().manual_seed(0))
    assert drawn.dtype == torch.float64 and e.kappa_min <= float(drawn.min()) and float(drawn.max()) < 1.0
    assert torch.equal(drawn, sp.draw_kappa(1000, None, True, e, torch.Generator().manual_seed(0)))
    assert sp.draw_kappa(4, None, False, e, None).tolist() == [1.0] * 4
    assert sp.draw_kappa(4, None, True, _cfg("ewm.temporal_split=false").ewm, None).tolist() == [1.0] * 4


def test_modality_dropout_removes_one_of_two_present_modalities():
    lengths = [torch.tensor([5, 5, 0, 0] * 50), torch.tensor([7, 0, 7, 0] * 50)]
    use = sp.modality_use(lengths, True, 1.0, torch.Generator().manual_seed(0))
    both = (lengths[0] > 0) & (lengths[1] > 0)
    assert bool(((use[0] ^ use[1]) | ~both).all())  # p = 1: exactly one survives where both were present
    assert 0 < int(use[0][both].sum()) < int(both.sum())  # each modality dropped some of the time
    assert torch.equal(use[0][~both], lengths[0][~both] > 0) and torch.equal(use[1][~both], lengths[1][~both] > 0)
    kept = sp.modality_use(lengths, False, 1.0, None)  # evaluation: nothing dropped
    assert torch.equal(kept[0], lengths[0] > 0) and torch.equal(kept[1], lengths[1] > 0)


def test_answer_column_from_answer_start_labels_or_row_end():
    batch = _batch()
    mask = batch["attention_mask"]
    assert torch.equal(sp.answer_cols(batch, mask), batch["answer_start"])
    no_start = _batch(with_answer_start=False)
    assert torch.equal(sp.answer_cols(no_start, mask), batch["answer_start"])
    no_labels = {k: v for k, v in no_start.items() if k != "labels"}
    assert torch.equal(sp.answer_cols(no_labels, mask), mask.sum(1))


# ----------------------------------------------------------------------------- the plans


def test_full_observation_counts_and_belief_tokens_without_truncation():
    cfg = _cfg("ewm.modality_dropout=0.0")
    s = _plan(_batch(), cfg, kappa=1.0)
    assert s.embeds is None and s.plan_past is None
    assert [n.tolist() for n in s.lengths] == [[12, 8, 0, 0], [10, 0, 7, 0]]
    assert [t.tolist() for t in s.split] == [n.tolist() for n in s.lengths]  # all observed tokens are past
    nb = cfg.ewm.n_belief_base
    assert (s.plan.kind == inj.BELIEF).sum(1).tolist() == [2 * nb, nb, nb, 0]  # Eq. 18
    assert s.plan.n_dropped.tolist() == [0, 0, 0, 0] and s.needs_states
    bare = _plan(_batch(), cfg, kappa=1.0, ewm=False)  # LoRA baseline: no EWM plans, no belief tokens
    assert bare.plan0 is None and bare.lengths is None and int((bare.plan.kind == inj.BELIEF).sum()) == 0


def test_training_split_keeps_whole_video_groups_and_orders_kept_tokens_first():
    cfg = _cfg("ewm.modality_dropout=0.0")
    s = _plan(_batch(), cfg, kappa=0.5)
    # 3 groups of 4 tokens at 0.5: 1.5 rounds to 2 groups; 2 groups: 1; audio 10 -> 5, 7 -> 3.5 rounds to 4
    assert [t.tolist() for t in s.split] == [[8, 4, 0, 0], [5, 0, 4, 0]]
    assert s.plan.n_dropped.tolist() == [4 + 5, 4, 3, 0]  # the keep mask is on in training
    assert s.plan_past is not None
    for m in range(2):
        for i in range(4):
            k = int(s.split[m][i])
            past = s.plan_past.orig_col[i, s.past_cols[m][i, :k]]
            assert torch.equal(s.plan0.orig_col[i, s.order[m][i, :k]], past)  # kept first, in past order
            n = int(s.lengths[m][i])
            every = s.plan0.orig_col[i][s.plan0.kind[i] == sp.KINDS[m]]
            assert sorted(s.plan0.orig_col[i, s.order[m][i, :n]].tolist()) == every.tolist()  # each token once
    no_mask = _plan(_batch(), _cfg("ewm.modality_dropout=0.0", "injection.keep_mask=false"), kappa=0.5)
    assert no_mask.plan.n_dropped.tolist() == [0] * 4  # the second pass sees everything ...
    assert [t.tolist() for t in no_mask.split] == [t.tolist() for t in s.split]  # ... the EWM still splits


def test_generation_plan_is_left_padded_and_cut_at_the_answer():
    batch = _batch()
    s = _plan(batch, _cfg(), kappa=1.0, training=False, for_generation=True)
    real = s.plan.attention_mask.bool()
    assert bool(real[:, -1].all())  # left padding: every prompt ends at the last column
    assert int((s.plan.labels != IGNORE_INDEX).sum()) == 0 and s.plan.n_dropped.tolist() == [0] * 4
    assert (s.plan.orig_col.max(1).values < batch["answer_start"]).all()


def test_the_plan_is_a_function_of_batch_config_and_generator():
    batch = _batch()
    before = {k: v.clone() for k, v in batch.items()}
    a, b = _plan(batch, _cfg(), seed=3), _plan(batch, _cfg(), seed=3)
    assert torch.equal(a.kappa, b.kappa) and all(torch.equal(x, y) for x, y in zip(a.use, b.use))
    assert torch.equal(a.plan.source, b.plan.source) and torch.equal(a.plan.position_ids, b.plan.position_ids)
    assert all(torch.equal(before[k], batch[k]) for k in before)  # the batch is not touched
    c = _plan(batch, _cfg(), seed=4)
    assert not torch.equal(a.kappa, c.kappa)


# ----------------------------------------------------------------------------- the shared prefix's host part


def test_shared_prefix_aligns_every_past_prefix_inside_the_head():
    cfg = _cfg("ewm.modality_dropout=0.0")
    s = _plan(_batch(), cfg, kappa=0.5)
    n0, head = prefix_columns(s, cfg.ewm, True, 1)
    assert 0 < n0 <= head
    has_av = (s.lengths[0] + s.lengths[1]) > 0
    # after alignment every A/V row's past sequence ends inside the shared head and is the modified sequence's prefix
    real = s.plan_past.attention_mask.bool()
    ends = torch.where(real, torch.arange(real.shape[1]) + 1, 0).max(1).values
    assert bool((ends[has_av] <= head).all())
    assert bool((agreement_rows(s.plan_past, s.plan)[has_av] >= head).all())
    # the EWM's columns moved with the rows: they still point at the same original tokens
    ref = _plan(_batch(), cfg, kappa=0.5)
    for m in range(2):
        for i in range(4):
            n = int(s.lengths[m][i])
            assert torch.equal(s.plan0.orig_col[i, s.order[m][i, :n]], ref.plan0.orig_col[i, ref.order[m][i, :n]])


@pytest.mark.parametrize("why", ["switched_off", "evaluation", "source_layer", "below_minimum"])
def test_shared_prefix_off(why):
    cfg = _cfg("ewm.modality_dropout=0.0", *(["ewm.source_layer=1"] if why == "source_layer" else []))
    s = _plan(_batch(), cfg, kappa=0.5, training=why != "evaluation")
    assert prefix_columns(s, cfg.ewm, why != "switched_off", 10_000 if why == "below_minimum" else 1) == (0, 0)
