"""Bootstrap intervals over test clips, for the figures: a score or a per-step mean recomputed on clips drawn
with replacement, and the 2.5th / 97.5th percentiles of the resampled values (a percentile interval).

Resampling is seeded, so an evaluation's intervals are reproducible. Each clip's part of the main score is
read once with the scorer's own helpers; a resample then costs numpy sums (tests check that the full sample
gives exactly ``unibench``'s score). scipy.stats.bootstrap would handle the means but not the protocol's
per-wheel ratios over a resample. This is the one bootstrap of the package: the evaluator's intervals, the
demo's paired comparison (:func:`paired_score_interval`) and the ablation experiment's intervals all draw
their 2000 resamples here.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from affectverse_ds.benchmarks import Benchmark, Label, LabelTable
from affectverse_ds.eval import metrics
from affectverse_ds.eval.predictions import PredictionSet
from affectverse_ds.eval.unibench import ScoringContext, mapped_by_wheel, predicted_sentiment, predicted_words

RESAMPLES = 2000  # the percentile tails of 2000 resamples move by ~0.1 point between seeds (200: ~0.5)
LEVEL = 0.95
SEED = 0


def _resample(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) clip indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentiles over axis 0 (NaN resamples ignored)."""
    tail = (100.0 - 100.0 * level) / 2.0  # exactly 2.5 for 0.95 (100 * (1 - 0.95) / 2 is 2.500000000000002)
    return np.nanpercentile(values, tail, axis=0), np.nanpercentile(values, 100.0 - tail, axis=0)


def mean_interval(per_sample: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Interval of the mean over clips: per_sample (n, S) -> low (S,), high (S,); (n,) -> two scalars."""
    per_sample = np.asarray(per_sample, dtype=np.float64)
    means = per_sample[_resample(len(per_sample), resamples, seed)].mean(axis=1)  # (R, S)
    return percentile_interval(means)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, resamples: int = RESAMPLES,
              seed: int = SEED) -> tuple[float, float, float]:
    """(value on all n clips, low, high) of any statistic of clip indices (n,), e.g. a score over wheels or a
    paired difference (pass a statistic that scores both models on the same indices)."""
    values = np.array([statistic(idx) for idx in _resample(n, resamples, seed)], dtype=np.float64)
    low, high = percentile_interval(values)
    return float(statistic(np.arange(n))), float(low), float(high)


def _terms(bench: Benchmark, gts: list[Label], samples: list, ctx: ScoringContext) -> dict[str, np.ndarray]:
    """Per-clip quantities from which the main score of any resample follows, read once with the scorer's
    own helpers (extraction and wheel mapping are the slow part; a resample then costs a few numpy sums)."""
    if bench.group == "sentiment":
        words = [predicted_sentiment(p, ctx.mapper, ctx.extractor) for p in samples]
        return {"val": np.array([g.val for g in gts], dtype=float),
                "polarity": np.array([metrics.polarity_value(w) for w in words], dtype=float)}
    gt_words = [[g.emo] for g in gts] if bench.group == "discrete" else [list(g.openset or ()) for g in gts]
    gt_sets = mapped_by_wheel(gt_words, ctx.wheels)  # [W][n]
    pred_sets = mapped_by_wheel([predicted_words(p, ctx.extractor) for p in samples], ctx.wheels)
    scored = np.array([[bool(y) for y in wheel] for wheel in gt_sets])  # (W, n)
    if bench.group == "discrete":
        hit = np.array([[bool(y & y_hat) for y, y_hat in zip(gw, pw)] for gw, pw in zip(gt_sets, pred_sets)])
        return {"scored": scored, "hit": hit & scored}
    common = [[len(y & y_hat) for y, y_hat in zip(gw, pw)] for gw, pw in zip(gt_sets, pred_sets)]
    p = np.array([[c / len(y_hat) if y_hat else 0.0 for c, y_hat in zip(cw, pw)] for cw, pw in zip(common, pred_sets)])
    r = np.array([[c / len(y) if y and y_hat else 0.0 for c, y, y_hat in zip(cw, gw, pw)]
                  for cw, gw, pw in zip(common, gt_sets, pred_sets)])
    return {"scored": scored, "p": p * scored, "r": r * scored}


def _resampled_main(group: str, terms: dict[str, np.ndarray], idx: np.ndarray) -> np.ndarray:
    """Main score (percent) of each resample: idx (R, n) -> (R,), as ``unibench.score_lists`` computes it."""
    if group == "sentiment":
        return np.array([100.0 * metrics.sentiment_scores(terms["val"][i], terms["polarity"][i]).wf1_nonzero
                         for i in idx])
    with np.errstate(invalid="ignore", divide="ignore"):
        n = terms["scored"][:, idx].sum(-1)  # (W, R)
        if group == "discrete":
            per_wheel = metrics.wheel_hit_rates(terms["hit"][:, idx], terms["scored"][:, idx])
        else:
            p, r = terms["p"][:, idx].sum(-1) / n, terms["r"][:, idx].sum(-1) / n
            per_wheel = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
        per_wheel = np.where(n > 0, per_wheel, np.nan)  # a wheel that scored nothing: NaN, as the protocol
    return 100.0 * per_wheel.mean(0)


def score_interval(bench: Benchmark, labels: LabelTable, preds: PredictionSet, ctx: ScoringContext,
                   resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Interval of a benchmark's main score over its test clips (each resample scored by the protocol).

    Returns (NaN, NaN) without labels or when every resample scores NaN.
    """
    names = list(labels.labels)
    if not names:
        return math.nan, math.nan
    terms = _terms(bench, [labels.labels[n] for n in names], [preds.entries.get(n) for n in names], ctx)
    values = _resampled_main(bench.group, terms, _resample(len(names), resamples, seed))
    if np.isnan(values).all():
        return math.nan, math.nan
    low, high = percentile_interval(values)
    return float(low), float(high)


def paired_score_interval(bench: Benchmark, labels: LabelTable, preds: PredictionSet, base: PredictionSet,
                          ctx: ScoringContext, resamples: int = RESAMPLES,
                          seed: int = SEED) -> tuple[float, float, float]:
    """(main score of ``preds`` minus that of ``base`` on all clips, low, high): the paired difference, both
    prediction sets scored by the protocol on the same resampled clips. NaNs without labels."""
    names = list(labels.labels)
    if not names:
        return math.nan, math.nan, math.nan
    gts = [labels.labels[n] for n in names]
    terms = [_terms(bench, gts, [p.entries.get(n) for n in names], ctx) for p in (preds, base)]
    everything = np.arange(len(names))[None]
    diff = float((_resampled_main(bench.group, terms[0], everything)
                  - _resampled_main(bench.group, terms[1], everything))[0])
    idx = _resample(len(names), resamples, seed)
    values = _resampled_main(bench.group, terms[0], idx) - _resampled_main(bench.group, terms[1], idx)
    if np.isnan(values).all():
        return diff, math.nan, math.nan
    low, high = percentile_interval(values)
    return diff, float(low), float(high)
