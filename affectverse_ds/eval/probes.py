"""Imagination fidelity (Table 8) and MAMA attention (Fig. 3): per-batch statistics as sums that add up
over batches and ranks."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import torch

from affectverse_ds.eval.intervals import mean_interval
from affectverse_ds.eval.report import ImaginationRow
from affectverse_ds.model.ewm import MODALITIES, EmotionWorldModule, adaptive_pool_matrix

PREDICTORS = ("ewm", "repeat_last", "mean_observed")
STREAMS = MODALITIES  # the EWM's stream order: its m-th down-projection and imagination module are STREAMS[m]
MAMA_SAMPLES = 16  # dual-modality samples averaged per heatmap (Fig. 3 shows a handful of validation clips)


class FidelitySums:
    """Per-sample cosine / MSE per (stream, predictor) and step, with their sums; gatherable across ranks.

    The per-sample values stay (a few floats per clip) so the figures can show bootstrap intervals over clips.
    """

    def __init__(self) -> None:
        self.cos: dict[tuple[str, str], np.ndarray] = {}
        self.mse: dict[tuple[str, str], np.ndarray] = {}
        self.n: dict[tuple[str, str], int] = defaultdict(int)
        self.samples: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)

    def add(self, stream: str, predictor: str, cos: torch.Tensor, mse: torch.Tensor) -> None:
        """cos, mse: (n, S) per sample and step (only samples with a future)."""
        self.add_samples((stream, predictor), cos.double().cpu().numpy(), mse.double().cpu().numpy())

    def merge(self, other: "FidelitySums") -> None:
        for key, parts in other.samples.items():
            for cos, mse in parts:
                self.add_samples(key, cos, mse)

    def add_samples(self, key: tuple[str, str], cos: np.ndarray, mse: np.ndarray) -> None:
        """cos, mse: (n, S) float64 arrays."""
        c, m = cos.sum(0), mse.sum(0)
        self.cos[key] = self.cos[key] + c if key in self.cos else c
        self.mse[key] = self.mse[key] + m if key in self.mse else m
        self.n[key] += int(cos.shape[0])
        self.samples[key].append((cos, mse))

    def rows(self, model: str, modality: str, kappa: float) -> list[ImaginationRow]:
        """Table 8 rows: means per step, and 95 % bootstrap intervals over the clips."""
        out = []
        for stream in STREAMS:
            for predictor in PREDICTORS:
                key = (stream, predictor)
                if self.n.get(key, 0) > 0:
                    n = self.n[key]
                    cos_lo, cos_hi = mean_interval(np.concatenate([c for c, _ in self.samples[key]]))
                    mse_lo, mse_hi = mean_interval(np.concatenate([m for _, m in self.samples[key]]))
                    out.append(ImaginationRow(model, modality, kappa, stream, predictor,
                                              (self.cos[key] / n).tolist(), (self.mse[key] / n).tolist(), n,
                                              cos_lo.tolist(), cos_hi.tolist(), mse_lo.tolist(), mse_hi.tolist()))
        return out


def _pool_future(z: torch.Tensor, split: torch.Tensor, length: torch.Tensor, n_bins: int) -> torch.Tensor:
    """AdaptiveAvgPool1D of the real future Z[T_p:L] to N_s tokens, per sample: (B, N_s, d_w) (Eq. 5's target)."""
    fut = (length - split).clamp(min=0)
    weights = adaptive_pool_matrix(split, fut, n_bins, z.shape[1]).to(z.dtype)  # (B, N_s, T)
    return weights @ z


def step_fidelity(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and step: cosine (per token, averaged over the N_s tokens) and MSE, exactly as the
    imagination loss measures them (Eq. 5, ``EmotionWorldModule.imagination_loss``).

    Args:
        pred: (B, S, N_s, d_w) predicted future tokens. target: (B, N_s, d_w) pooled real future.
    Returns:
        cos, mse: (B, S).
    """
    _, mse, cos = EmotionWorldModule.imagination_loss(pred, target)
    return cos, mse


def fidelity_from_trace(trace, sums: FidelitySums) -> None:
    """Add one batch's Table 8 statistics (see :func:`trace_fidelity`) to ``sums``."""
    for stream, predictor, _, cos, mse in trace_fidelity(trace):
        sums.add(stream, predictor, cos, mse)


def trace_fidelity(trace):
    """The one Table 8 probe: the EWM's imagined tokens and the two baselines, against the pooled real future
    of each stream, for every sample whose stream has a future (evaluation sums it; the EWM-vs-LoRA
    experiment keeps it per clip).

    Baselines, on the same targets: ``repeat_last`` predicts the last observed token Z[T_p - 1] at every
    future position; ``mean_observed`` the mean of the observed tokens Z[:T_p]. Both are repeated over
    the S steps (they have no notion of step).

    Args:
        trace: see :func:`imagination_trace` (``z``, ``lengths``, ``split``, ``use``, ``imagined`` per stream).
    Yields:
        (stream, predictor, valid (B,) bool: the samples measured, cos (n, S), mse (n, S)).
    """
    for m, stream in enumerate(STREAMS):
        z, length, split = trace.z[m].float(), trace.lengths[m].long(), trace.split[m].long()
        ys = trace.imagined[m].float()  # (B, S, N_s, d_w)
        valid = trace.use[m].bool() & (length - split > 0)
        if not bool(valid.any()):
            continue
        z, length, split, ys = z[valid], length[valid], split[valid], ys[valid]
        n_steps, n_future = ys.shape[1], ys.shape[2]
        target = _pool_future(z, split, length, n_future)  # (n, N_s, d_w)
        rows = torch.arange(z.shape[0], device=z.device)
        last = z[rows, (split - 1).clamp(min=0)]  # (n, d_w)
        past = (torch.arange(z.shape[1], device=z.device)[None] < split[:, None]).to(z.dtype)  # (n, T)
        mean = (past[..., None] * z).sum(1) / past.sum(1, keepdim=True).clamp(min=1)  # (n, d_w)
        for predictor, pred in (("ewm", ys),
                                ("repeat_last", last[:, None, None].expand(-1, n_steps, n_future, -1)),
                                ("mean_observed", mean[:, None, None].expand(-1, n_steps, n_future, -1))):
            cos, mse = step_fidelity(pred, target)
            yield stream, predictor, valid, cos, mse


def imagination_trace(model, batch: dict, kappa: float):
    """The EWM's view of a fully observed batch split at ``kappa``, or None when the model has no such API.

    Expected from ``AffectVerseModel.imagination_trace(batch, kappa)`` (eval mode, no modality dropout,
    full observation so the future exists): an object with per stream [video, audio]
    ``z`` (B, T, d_w) bottleneck tokens, ``lengths`` (B,), ``split`` (B,) = T_p, ``use`` (B,) bool and
    ``imagined`` (B, S, N_s, d_w) rolled out from the past only.
    """
    probe = getattr(model, "imagination_trace", None)
    if probe is None or getattr(model, "ewm", None) is None:
        return None
    return probe(batch, kappa)


def probe_kappas(keep_ratios: Sequence[float], kappa_min: float) -> list[float]:
    """Split points for Table 8, largest first: two inside the training range U[kappa_min, 1) (its lower end
    and its middle: 0.7 and 0.85 by default) and the sweep's keep ratios below 1 (at kappa = 1 there is no
    future to compare with), so imagination is measured where it was trained as well as beyond."""
    inside = [kappa_min, round((kappa_min + 1.0) / 2.0, 6)]
    return sorted({round(k, 6) for k in [*inside, *keep_ratios] if k < 1.0}, reverse=True)


class MamaSums:
    """Running sum of MAMA belief->memory attention over dual-modality samples (Fig. 3)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.n = 0

    def add(self, weights: torch.Tensor, dual: torch.Tensor, limit: int) -> None:
        """weights (B, N_q, N_M); dual (B,) bool: the sample saw both modalities (2 N_b beliefs). Only those
        count: a single-modality sample has half the belief rows, so averaging it in would mix two layouts."""
        if self.n >= limit or weights is None or not bool(dual.any()):
            return
        w = weights[dual.to(weights.device)][: limit - self.n].double().cpu().numpy()
        self.total = w.sum(0) if self.total is None else self.total + w.sum(0)
        self.n += w.shape[0]

    def merge(self, other: "MamaSums") -> None:
        if other.total is not None:
            self.total = other.total.copy() if self.total is None else self.total + other.total
            self.n += other.n

    def mean(self) -> np.ndarray | None:
        return self.total / self.n if self.n else None


def mama_weights(model, batch: dict):
    """(weights (B, N_q, N_M), dual (B,) bool) of the inference preparation at kappa = 1, or None.

    ``dual``: the sample has the full dual belief set 2 N_b (both audio and video observed, Eq. 18).
    """
    if getattr(model, "ewm", None) is None:
        return None
    prep = model.prepare_inputs(batch, kappa=1.0, for_generation=True)
    if prep.ewm is None or prep.ewm.mama_weights is None:
        return None
    n_belief = prep.ewm.n_belief.cpu()
    return prep.ewm.mama_weights, (n_belief == 2 * model.ewm.cfg.n_belief_base) & (n_belief > 0)
