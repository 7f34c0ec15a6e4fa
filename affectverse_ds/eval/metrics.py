"""Scoring functions of MER-UniBench and the conventional metrics beside them (pure numpy, no torch).

Inputs are already mapped: cluster sets per wheel (from :mod:`affectverse_ds.eval.wheel`),
polarity values, or class words. Scores are fractions in [0, 1]; a score over zero
samples is NaN (nothing to average), never an exception.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

ClusterSets = Sequence[frozenset]  # one mapped set per sample, for one wheel


# ----------------------------------------------------------------------------- classification basics

def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Fraction of equal pairs, like sklearn ``accuracy_score``.

    Args:
        y_true: ground-truth labels.
        y_pred: predicted labels, same length.

    Returns:
        The accuracy, NaN when there are no samples.
    """
    y_true, y_pred = _paired(y_true, y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def weighted_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Support-weighted mean of per-class F1, like sklearn ``f1_score(average="weighted")``.

    Classes are the union of true and predicted labels; a class only ever predicted has
    support 0, so it costs precision on the others but adds no term of its own.

    Args:
        y_true: ground-truth labels (any hashable: bool, int, str).
        y_pred: predicted labels, same length.

    Returns:
        The weighted F1, NaN when there are no samples.
    """
    y_true, y_pred = _paired(y_true, y_pred)
    if not len(y_true):
        return float("nan")
    total = 0.0
    for cls in np.unique(np.concatenate([y_true, y_pred])):
        is_true, is_pred = y_true == cls, y_pred == cls
        tp = np.sum(is_true & is_pred)
        denom = np.sum(is_true) + np.sum(is_pred)  # 2tp + fp + fn
        total += np.sum(is_true) * (2.0 * tp / denom if denom else 0.0)
    return float(total / len(y_true))


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(list(y_true)), np.asarray(list(y_pred))
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.shape[0]} samples, y_pred {b.shape[0]}")
    if (a.dtype.kind in "USO") != (b.dtype.kind in "USO"):
        # text against numbers would compare unequal everywhere; compare as text instead
        a, b = a.astype(str), b.astype(str)
    return a, b


# ----------------------------------------------------------------------------- MER-UniBench main scores

@dataclass(frozen=True)
class WheelScore:
    """A score averaged over emotion wheels.

    Args:
        mean: mean over the wheels of ``per_wheel`` (NaN if any wheel scored nothing).
        per_wheel: the score of each wheel.
        scored: samples scored on each wheel (mapped GT non-empty).
    """

    mean: float
    per_wheel: tuple[float, ...]
    scored: tuple[int, ...]


def hit_rate_wheel(gt: ClusterSets, pred: ClusterSets) -> tuple[float, int]:
    """HIT rate on one wheel: among samples with non-empty mapped GT, the share whose prediction meets it.

    Args:
        gt: mapped GT cluster set per sample.
        pred: mapped predicted cluster set per sample (extra clusters cost nothing).

    Returns:
        (hit rate, number of samples scored); NaN rate when none is scored.
    """
    _check_same_length(gt, pred)
    scored = np.array([bool(g) for g in gt], dtype=bool)
    hit = np.array([bool(g & p) for g, p in zip(gt, pred)], dtype=bool)
    return float(wheel_hit_rates(hit, scored)), int(scored.sum())


def wheel_hit_rates(hit: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """The one HIT computation: per wheel, the mean hit over the samples it scores.

    The protocol's score (:func:`hit_rate`), its bootstrap (``eval.intervals``) and the EWM-vs-LoRA
    experiment's per-clip hits averaged over seeds all reduce to this.

    Args:
        hit: (..., n) hit of each sample, bool or a number (e.g. a hit averaged over seeds); ignored
            where not scored.
        scored: (..., n) bool, the sample's mapped GT is non-empty on that wheel.

    Returns:
        (...,) hit rates in the unit of ``hit``; NaN where nothing is scored.
    """
    scored = np.asarray(scored, dtype=bool)
    n = scored.sum(-1)
    total = np.where(scored, hit, 0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


def hit_rate(gt_by_wheel: Sequence[ClusterSets], pred_by_wheel: Sequence[ClusterSets]) -> WheelScore:
    """HIT rate of every wheel and their mean (the discrete-group main score).

    Args:
        gt_by_wheel: for each wheel, the mapped GT set per sample.
        pred_by_wheel: for each wheel, the mapped predicted set per sample.

    Returns:
        The :class:`WheelScore`.
    """
    per = [hit_rate_wheel(g, p) for g, p in zip(gt_by_wheel, pred_by_wheel, strict=True)]
    return WheelScore(float(np.mean([r for r, _ in per])), tuple(r for r, _ in per), tuple(n for _, n in per))


@dataclass(frozen=True)
class SetScore:
    """Open-vocabulary set scores, each averaged over wheels (F, P, R as in docs/evaluation.md)."""

    f: WheelScore
    precision: WheelScore
    recall: WheelScore


def set_prf_wheel(gt: ClusterSets, pred: ClusterSets) -> tuple[float, float, float, int]:
    """OV set precision, recall and F on one wheel.

    P_i = |Y ∩ Ŷ| / |Ŷ| and R_i = |Y ∩ Ŷ| / |Y| per sample (both 0 for an empty Ŷ), averaged
    over the samples whose mapped GT Y is non-empty; F = 2PR / (P + R) of the averages.

    Args:
        gt: mapped GT set Y per sample.
        pred: mapped predicted set Ŷ per sample.

    Returns:
        (F, P, R, samples scored); NaN scores when none is scored, F = 0 when P + R = 0.
    """
    _check_same_length(gt, pred)
    ps, rs = [], []
    for y, y_hat in zip(gt, pred):
        if not y:
            continue
        common = len(y & y_hat)
        ps.append(common / len(y_hat) if y_hat else 0.0)
        rs.append(common / len(y) if y_hat else 0.0)
    if not ps:
        return float("nan"), float("nan"), float("nan"), 0
    p, r = float(np.mean(ps)), float(np.mean(rs))
    return (2 * p * r / (p + r) if p + r else 0.0), p, r, len(ps)


def set_prf(gt_by_wheel: Sequence[ClusterSets], pred_by_wheel: Sequence[ClusterSets]) -> SetScore:
    """OV set F, P and R of every wheel and their means (the open-vocabulary main score is F).

    Args:
        gt_by_wheel: for each wheel, the mapped GT set per sample.
        pred_by_wheel: for each wheel, the mapped predicted set per sample.

    Returns:
        The :class:`SetScore`.
    """
    per = [set_prf_wheel(g, p) for g, p in zip(gt_by_wheel, pred_by_wheel, strict=True)]
    scored = tuple(row[3] for row in per)

    def column(i: int) -> WheelScore:
        values = tuple(row[i] for row in per)
        return WheelScore(float(np.mean(values)), values, scored)

    return SetScore(f=column(0), precision=column(1), recall=column(2))


def polarity_value(word: str | None) -> int:
    """MER-UniBench's reading of a sentiment answer: +1 positive, -1 negative, 0 anything else."""
    word = (word or "").strip().lower()
    return 1 if word == "positive" else -1 if word == "negative" else 0


@dataclass(frozen=True)
class SentimentScore:
    """Sentiment main scores on the non-zero-GT samples.

    Args:
        wf1_nonzero: ``f1_score(gt > 0, pred > 0, average="weighted")``.
        acc2_nonzero: ``accuracy_score(gt > 0, pred > 0)``.
        scored: samples with GT != 0.
        skipped: samples with GT == 0.
    """

    wf1_nonzero: float
    acc2_nonzero: float
    scored: int
    skipped: int


def sentiment_scores(gt: Sequence[float], pred: Sequence[float]) -> SentimentScore:
    """The sentiment-group main score of MER-UniBench.

    A predicted 0 (neutral, or any non-polar answer) counts as negative, as in the protocol.

    Args:
        gt: GT sentiment scores.
        pred: predicted polarities (+1 / -1 / 0) or scores, same length.

    Returns:
        The :class:`SentimentScore`.
    """
    gt_arr, pred_arr = np.asarray(gt, dtype=float), np.asarray(pred, dtype=float)
    _check_same_length(gt_arr, pred_arr)
    keep = gt_arr != 0
    y_true, y_pred = gt_arr[keep] > 0, pred_arr[keep] > 0
    return SentimentScore(weighted_f1(y_true, y_pred), accuracy(y_true, y_pred), int(keep.sum()), int((~keep).sum()))


# ----------------------------------------------------------------------------- conventional metrics

def discrete_conventional(gt: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Closed-set weighted F1 and accuracy over all classes, neutral included.

    Args:
        gt: GT class words.
        pred: predicted class words (any word outside the classes simply counts as wrong).

    Returns:
        ``{"wf1": ..., "acc": ...}`` as fractions.
    """
    return {"wf1": weighted_f1(gt, pred), "acc": accuracy(gt, pred)}


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when a side is constant or there are fewer than 2 samples."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    _check_same_length(a, b)
    if len(a) < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def sentiment_conventional(gt: Sequence[float], pred: Sequence[float]) -> dict[str, float]:
    """The usual CMU-MOSI-style sentiment metrics.

    ``acc2_has0`` / ``f1_has0`` compare ``gt >= 0`` with ``pred >= 0`` on every sample;
    ``acc2_non0`` / ``f1_non0`` compare ``gt > 0`` with ``pred > 0`` on GT != 0 (F1 weighted).

    Args:
        gt: GT sentiment scores.
        pred: predicted scores (or polarities +1 / 0 / -1 when the model gives no score).

    Returns:
        Dict with ``acc2_has0, f1_has0, acc2_non0, f1_non0, mae, corr``.
    """
    gt_arr, pred_arr = np.asarray(gt, dtype=float), np.asarray(pred, dtype=float)
    _check_same_length(gt_arr, pred_arr)
    non0 = gt_arr != 0
    return {
        "acc2_has0": accuracy(gt_arr >= 0, pred_arr >= 0),
        "f1_has0": weighted_f1(gt_arr >= 0, pred_arr >= 0),
        "acc2_non0": accuracy(gt_arr[non0] > 0, pred_arr[non0] > 0),
        "f1_non0": weighted_f1(gt_arr[non0] > 0, pred_arr[non0] > 0),
        "mae": float(np.mean(np.abs(gt_arr - pred_arr))) if len(gt_arr) else float("nan"),
        "corr": pearson(gt_arr, pred_arr),
    }


def _check_same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} ground-truth entries but {len(b)} predictions")
