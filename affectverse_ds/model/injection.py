"""Belief-token insertion, the token-level keep mask with repadding, and 3D M-RoPE ids of the new sequence.

All of it is integer bookkeeping on the host (paper Eq. 8 and App. D.4). A
:class:`SequencePlan` says, for every position of the modified batch, where its
embedding comes from: an original token, a belief token, or padding. The
composition then gathers embeddings with one index (``plan.source``).

Rules:
* A/V regions are maximal runs of ``<|VIDEO|>`` / ``<|AUDIO|>`` placeholders.
  The keep mask keeps the first ``split_points(kappa, n_units) * unit`` tokens of each (kappa of the units,
  rounded to the nearest), where a unit is a temporal patch group for video (``grid_h * grid_w / merge^2``
  tokens: whole 2-frame groups are kept or dropped, never part of one's spatial rows) and one token for
  audio; an audio region whose waveform length is known is cut in samples instead
  (``processing.audio_keep_samples``) and keeps the tokens the collator would make of the clip cut there
  (``processing.audio_token_count``), the count ``past_inputs.py``'s own tower pass produces.
* Belief tokens: the first half right after the last (kept) A/V token, the
  second half right before the first answer token (after ``<|im_start|>assistant\\n``);
  with ``positions=1`` all of them before the answer. Labels -100, attention 1.
* Position ids follow ``get_rope_index`` (``use_audio_in_video=False``): text and
  belief tokens take running max + 1 in all three dims; a kept A/V token takes
  ``region_start + offset`` where ``region_start`` is running max + 1 when the
  region begins and ``offset`` is its original (t, h, w) offset inside the region.
  Padding gets 1, as in ``get_rope_index``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from affectverse_ds.data import processing
from affectverse_ds.data.batch import AUDIO_TOKEN_ID, IGNORE_INDEX, VIDEO_TOKEN_ID
from affectverse_ds.model.ewm import split_points

PAD, TEXT, VIDEO, AUDIO, BELIEF = 0, 1, 2, 3, 4  # SequencePlan.kind codes


@dataclass
class Region:
    """One contiguous A/V placeholder run of a sample (columns in the padded row)."""

    start: int
    end: int
    kind: int  # VIDEO or AUDIO
    offsets: np.ndarray  # (3, end - start) (t, h, w) offsets from the region's first token
    unit: int = 1  # tokens per cut unit: one temporal patch group (video), one token (audio)
    samples: int = 0  # audio: waveform samples behind the region (0: unknown, cut in tokens)


@dataclass
class RowPlan:
    """One sample's modified sequence: ``cols`` >= 0 are original columns, -1 - k is belief token k."""

    cols: np.ndarray  # (n,)
    kind: np.ndarray  # (n,)
    pos: np.ndarray  # (3, n)


@dataclass
class SequencePlan:
    """The modified batch. ``source`` indexes the table ``[embeds (B*L) ; beliefs (B*K) ; zero row]``."""

    source: torch.Tensor  # (B, L') long
    attention_mask: torch.Tensor  # (B, L') long
    labels: torch.Tensor  # (B, L') long
    position_ids: torch.Tensor  # (3, B, L') long
    kind: torch.Tensor  # (B, L') long, PAD/TEXT/VIDEO/AUDIO/BELIEF
    orig_col: torch.Tensor  # (B, L') long, original column; -1 for belief and pad
    belief_index: torch.Tensor  # (B, L') long, k for belief token k; -1 otherwise
    n_dropped: torch.Tensor  # (B,) A/V tokens removed by the keep mask
    n_cols: int  # L of the original batch (table layout)
    k_max: int  # belief slots per sample in the table


# ----------------------------------------------------------------------------- regions and offsets


def video_offsets(grid_thw: torch.Tensor, second_per_grid: float, merge: int, pos_per_second: int) -> np.ndarray:
    """(3, t*h*w/merge^2) offsets of one video's tokens, exactly as ``get_llm_pos_ids_for_vision`` lays them out."""
    t, h, w = (int(x) for x in grid_thw)
    gh, gw = h // merge, w // merge
    # same float expression as get_rope_index, so the rounding is identical
    t_index = (torch.arange(t) * torch.tensor(second_per_grid).float() * pos_per_second).long().numpy()
    tt = np.repeat(t_index, gh * gw)
    hh = np.tile(np.repeat(np.arange(gh), gw), t)
    ww = np.tile(np.arange(gw), t * gh)
    return np.stack([tt, hh, ww]).astype(np.int64)


def find_regions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    video_grid_thw: torch.Tensor | None,
    video_second_per_grid: torch.Tensor | None,
    merge: int = 2,
    pos_per_second: int = 25,
    audio_samples: torch.Tensor | None = None,
) -> list[list[Region]]:
    """The A/V regions of every sample; videos and audios are matched to regions in batch order (the batch contract).

    Args:
        input_ids, attention_mask: (B, L) on the host.
        video_grid_thw: (n_videos, 3); video_second_per_grid: (n_videos,) (default 1.0 s).
        audio_samples: (n_audios,) waveform lengths (``audio_waveform_lengths``), or None (audio cut in tokens).
    """
    out: list[list[Region]] = []
    n_video = n_audio = 0
    ids = input_ids.numpy()
    real = attention_mask.numpy().astype(bool)
    for i in range(ids.shape[0]):
        row = np.where(real[i], ids[i], -1)
        regions = []
        for token, kind in ((VIDEO_TOKEN_ID, VIDEO), (AUDIO_TOKEN_ID, AUDIO)):
            hit = np.concatenate([[False], row == token, [False]]).astype(np.int8)
            starts = np.flatnonzero(np.diff(hit) == 1)
            ends = np.flatnonzero(np.diff(hit) == -1)
            regions += [(int(s), int(e), kind) for s, e in zip(starts, ends)]
        rows = []
        for s, e, kind in sorted(regions):
            if kind == VIDEO:
                spg = float(video_second_per_grid[n_video]) if video_second_per_grid is not None else 1.0
                off = video_offsets(video_grid_thw[n_video], spg, merge, pos_per_second)
                if off.shape[1] != e - s:
                    raise ValueError(f"sample {i}: {e - s} video tokens but grid {video_grid_thw[n_video].tolist()}")
                n_video += 1
                unit = (e - s) // int(video_grid_thw[n_video - 1][0])
                samples = 0
            else:
                off = np.repeat(np.arange(e - s)[None], 3, axis=0)
                unit = 1
                samples = int(audio_samples[n_audio]) if audio_samples is not None else 0
                if samples and processing.audio_token_count(samples) != e - s:
                    raise ValueError(f"sample {i}: {e - s} audio tokens but a waveform of {samples} samples")
                n_audio += 1
            rows.append(Region(s, e, kind, off, unit, samples))
        out.append(rows)
    return out


# ----------------------------------------------------------------------------- one row


def plan_row(
    n_cols: int,
    real_start: int,
    regions: list[Region],
    keep: list[int],
    n_belief: int,
    answer_col: int,
    positions: int = 2,
    stop_after_av: bool = False,
) -> RowPlan:
    """The modified sequence of one sample.

    Args:
        n_cols: end (exclusive) of the real tokens in the padded row; real tokens are ``[real_start, n_cols)``.
        regions: A/V regions (columns), in order; keep: tokens kept per region.
        n_belief: belief tokens to insert (0: none).
        answer_col: column of the first answer token (``n_cols`` when the prompt ends there).
        positions: 2 interleaved halves, 1 all before the answer.
        stop_after_av: end right after the last kept A/V token (the full-observation pass needs nothing later).
    """
    first = n_belief // 2 if positions == 2 and regions else 0
    p_av = regions[-1].end if regions else -1
    end = n_cols
    if stop_after_av:
        end = p_av if regions else min(real_start + 1, n_cols)
        answer_col = end + 1  # no answer-side insertion in this pass
    bounds = sorted({real_start, end, *(b for r in regions for b in (r.start, r.end) if b <= end)}
                    | ({answer_col} if real_start <= answer_col < end else set()))
    by_start = {r.start: (r, k) for r, k in zip(regions, keep)}
    cols, kinds, pos = [], [], []
    top = -1  # running max position

    def emit_text(c: np.ndarray, kind: int) -> None:
        nonlocal top
        cols.append(c)
        kinds.append(np.full(len(c), kind))
        pos.append(np.repeat((top + 1 + np.arange(len(c)))[None], 3, axis=0))
        top += len(c)

    for a, b in zip(bounds, bounds[1:] + [None]):
        if a == p_av and first:
            emit_text(-1 - np.arange(first), BELIEF)
        if a == answer_col and n_belief - first:
            emit_text(-1 - np.arange(first, n_belief), BELIEF)
        if b is None:
            break
        if a in by_start:
            region, k = by_start[a]
            cols.append(np.arange(a, a + k))
            kinds.append(np.full(k, region.kind))
            p = top + 1 + region.offsets[:, :k]
            pos.append(p)
            top = int(p.max()) if k else top
        else:
            emit_text(np.arange(a, b), TEXT)
    if not cols:
        return RowPlan(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((3, 0), np.int64))
    return RowPlan(np.concatenate(cols).astype(np.int64), np.concatenate(kinds).astype(np.int64),
                   np.concatenate(pos, axis=1).astype(np.int64))


# ----------------------------------------------------------------------------- the batch


def keep_counts(kappa: torch.Tensor | float, regions: list[Region]) -> list[int]:
    """Tokens the keep mask keeps per region: whole units (temporal patch groups / audio tokens), at least one;
    an audio region with its waveform length: the tokens of the waveform cut at ``kappa`` in samples."""
    if not regions:
        return []
    units = torch.tensor([(r.end - r.start) // r.unit for r in regions], dtype=torch.long)
    kept = split_points(torch.as_tensor(kappa, dtype=torch.float64).expand(len(regions)), units)
    return [processing.audio_token_count(processing.audio_keep_samples(float(kappa), r.samples)) if r.samples
            else int(k) * r.unit for k, r in zip(kept, regions)]


def build_plan(
    regions: list[list[Region]],
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    answer_col: torch.Tensor,
    keep_ratio: torch.Tensor | None,
    n_belief: torch.Tensor,
    positions: int = 2,
    pad_side: str = "right",
    stop_after_av: bool = False,
    cut_at_answer: bool = False,
) -> SequencePlan:
    """Plan the modified batch (host tensors in, host tensors out).

    Args:
        regions: :func:`find_regions` of the batch.
        attention_mask: (B, L) of the original batch (left or right padded).
        labels: (B, L) or None.
        answer_col: (B,) column of the first answer token in the padded row.
        keep_ratio: (B,) kappa for the keep mask, or None to keep every A/V token.
        n_belief: (B,) belief tokens per sample.
        pad_side: padding of the output ("left" for generation with a KV cache).
        stop_after_av: only the prefix up to the last A/V token (full-observation pass).
        cut_at_answer: drop the answer tokens (generation / scoring prompts).
    """
    b, n_cols_all = attention_mask.shape
    mask = attention_mask.numpy().astype(bool)
    k_max = max(int(n_belief.max()) if b else 0, 1)
    rows, dropped = [], []
    for i in range(b):
        real = np.flatnonzero(mask[i])
        start, stop = (int(real[0]), int(real[-1]) + 1) if len(real) else (0, 0)
        ans = int(answer_col[i])
        if cut_at_answer:
            stop = min(stop, ans)
        regs = [r for r in regions[i] if r.end <= stop]
        lens = torch.tensor([r.end - r.start for r in regs], dtype=torch.long)
        if keep_ratio is None or not regs:
            keep = lens.tolist()
        else:
            keep = keep_counts(keep_ratio[i], regs)
        dropped.append(int(lens.sum()) - sum(keep))
        rows.append(plan_row(stop, start, regs, keep, int(n_belief[i]), ans, positions, stop_after_av))
    width = max(max((len(r.cols) for r in rows), default=0), 1)
    return _assemble(rows, labels, n_cols_all, k_max, width, pad_side, torch.tensor(dropped))


def _assemble(rows: list[RowPlan], labels, n_cols, k_max, width, pad_side, dropped) -> SequencePlan:
    b = len(rows)
    zero_row = b * n_cols + b * k_max
    source = torch.full((b, width), zero_row, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    lab = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    pos = torch.ones((3, b, width), dtype=torch.long)
    kind = torch.full((b, width), PAD, dtype=torch.long)
    orig = torch.full((b, width), -1, dtype=torch.long)
    bidx = torch.full((b, width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.cols)
        sl = slice(0, n) if pad_side == "right" else slice(width - n, width)
        cols = torch.from_numpy(r.cols)
        is_tok = cols >= 0
        src = torch.where(is_tok, i * n_cols + cols, b * n_cols + i * k_max + (-1 - cols))
        source[i, sl] = src
        attn[i, sl] = 1
        pos[:, i, sl] = torch.from_numpy(r.pos)
        kind[i, sl] = torch.from_numpy(r.kind)
        orig[i, sl] = torch.where(is_tok, cols, -1)
        bidx[i, sl] = torch.where(is_tok, -1, -1 - cols)
        if labels is not None:
            lab[i, sl] = torch.where(is_tok, labels[i, cols.clamp(min=0)], IGNORE_INDEX)
    return SequencePlan(source, attn, lab, pos, kind, orig, bidx, dropped, n_cols, k_max)


def gather_embeddings(plan: SequencePlan, embeds: torch.Tensor, beliefs: torch.Tensor | None,
                      cols: slice = slice(None)) -> torch.Tensor:
    """The modified batch's input embeddings: (B, L', d) from embeds (B, L, d) and beliefs (B, K, d).

    ``cols`` selects a column range of the plan (the two chunks of a prefix-shared step).
    """
    b, n_cols, d = embeds.shape
    assert n_cols == plan.n_cols, "plan built for another batch"
    if beliefs is None:
        beliefs = embeds.new_zeros(b, plan.k_max, d)
    beliefs = torch.nn.functional.pad(beliefs.to(embeds.dtype), (0, 0, 0, max(plan.k_max - beliefs.shape[1], 0)))
    table = torch.cat([embeds.reshape(-1, d), beliefs[:, :plan.k_max].reshape(-1, d), embeds.new_zeros(1, d)])
    return table[plan.source[:, cols].to(embeds.device)]  # (B, L', d)


def shift_rows(plan: SequencePlan, offsets: torch.Tensor) -> SequencePlan:
    """The right-padded ``plan`` with row i moved ``offsets[i]`` columns to the right (padding before it).

    Used to align the rows' A/V prefixes at one column (a prefix-shared training step); positions, labels and
    sources travel with their tokens, so the decoder sees the same rows, only laid out differently.
    """
    b, w = plan.source.shape
    real = plan.attention_mask.bool()
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError("shift_rows needs a right-padded plan")
    offsets = offsets.long()
    width = max(int((offsets + real.sum(1)).max()), 1)
    src = torch.arange(width)[None] - offsets[:, None]  # (B, W) column in the old plan
    ok = (src >= 0) & (src < w)
    src = src.clamp(0, w - 1)

    def take(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.where(ok, t.gather(1, src), fill)

    zero_row = b * plan.n_cols + b * plan.k_max
    pos = torch.where(ok[None], plan.position_ids.gather(2, src[None].expand(3, -1, -1)), 1)
    return SequencePlan(take(plan.source, zero_row), take(plan.attention_mask, 0), take(plan.labels, IGNORE_INDEX),
                        pos, take(plan.kind, PAD), take(plan.orig_col, -1), take(plan.belief_index, -1),
                        plan.n_dropped, plan.n_cols, plan.k_max)
