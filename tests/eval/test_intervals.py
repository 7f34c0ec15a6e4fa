"""Bootstrap intervals over test clips: the protocol's score recomputed on resampled clips, and per-step means."""
from __future__ import annotations

import numpy as np
import pytest

from affectverse_ds.benchmarks import Label, LabelTable, get_benchmark
from affectverse_ds.eval.intervals import mean_interval, paired_score_interval, score_interval
from affectverse_ds.eval.predictions import Prediction, PredictionSet
from affectverse_ds.eval.unibench import ScoringContext, score_predictions


def _sentiment_run(n_right: int, n: int = 40):
    """``n`` MOSI clips, half positive and half negative; the first ``n_right`` predicted right."""
    labels, preds = {}, PredictionSet("run.jsonl")
    for i in range(n):
        val = 1.0 if i % 2 == 0 else -1.0
        labels[f"c{i}"] = Label(val=val)
        right = "positive" if val > 0 else "negative"
        wrong = "negative" if val > 0 else "positive"
        preds.add(f"c{i}", Prediction(text=None, sentiment=right if i < n_right else wrong))
    return LabelTable(labels, {}), preds


def test_score_interval_brackets_the_score_and_is_reproducible(tiny_wheels):
    bench, ctx = get_benchmark("cmumosi"), ScoringContext(tiny_wheels)
    labels, preds = _sentiment_run(n_right=40)
    assert score_interval(bench, labels, preds, ctx) == (100.0, 100.0)  # every resample is all right
    labels, preds = _sentiment_run(n_right=26)
    main = score_predictions(bench, labels, preds, ctx).main
    low, high = score_interval(bench, labels, preds, ctx)
    assert low < main < high and high - low > 10  # 40 clips: a wide interval
    assert score_interval(bench, labels, preds, ctx) == (low, high)  # seeded
    assert score_interval(bench, labels, preds, ctx, seed=1) != (low, high)


def test_score_interval_without_labels_is_nan(tiny_wheels):
    low, high = score_interval(get_benchmark("cmumosi"), LabelTable({}, {}), PredictionSet("x.jsonl"),
                               ScoringContext(tiny_wheels))
    assert np.isnan(low) and np.isnan(high)


def test_mean_interval_per_step_narrows_with_more_clips():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.2, (20, 3)), rng.normal(0.5, 0.2, (2000, 3))
    for data in (small, large):
        low, high = mean_interval(data)
        assert low.shape == high.shape == (3,) and (low < data.mean(0)).all() and (data.mean(0) < high).all()
    width_small = np.subtract(*mean_interval(small)[::-1])
    width_large = np.subtract(*mean_interval(large)[::-1])
    assert (width_large < width_small / 5).all()  # ~ 1/sqrt(n): 10x more clips per 100x more
    # the standard error of the mean: a 95 % interval is about 2 x 1.96 sigma / sqrt(n) wide
    assert width_large == pytest.approx(2 * 1.96 * large.std(0) / np.sqrt(len(large)), rel=0.25)
    low, high = mean_interval(np.full((5, 2), 0.3))
    assert np.allclose(low, 0.3) and np.allclose(high, 0.3)


@pytest.mark.parametrize("name", ["meld", "ovmerd", "cmumosi"])
def test_resampling_the_clips_as_they_are_gives_the_protocol_score(tiny_wheels, name):
    """The per-clip terms a resample is scored from reproduce ``unibench``'s main score on the full sample."""
    from affectverse_ds.eval.intervals import _resampled_main, _terms

    rng = np.random.default_rng(3)
    bench, ctx = get_benchmark(name), ScoringContext(tiny_wheels)
    words = ["happy", "joy", "sad", "angry", "worried", "calm", "fear", "neutral", "surprise", "positive", "nothing"]
    labels, preds = {}, PredictionSet("run.jsonl")
    for i in range(60):
        if bench.group == "discrete":
            labels[f"c{i}"] = Label(emo=str(rng.choice(bench.classes)))
        elif bench.group == "openset":
            labels[f"c{i}"] = Label(openset=tuple(rng.choice(words[:9], size=int(rng.integers(0, 3)), replace=False)))
        else:
            labels[f"c{i}"] = Label(val=float(rng.choice([-2.0, -0.4, 0.0, 0.6, 1.8])))
        if i % 7:  # every 7th clip has no prediction (scored as empty)
            said = rng.choice(words, size=int(rng.integers(0, 3)), replace=False)
            preds.add(f"c{i}", Prediction(text=f"The character's emotional state is {', '.join(said)}."))
    table = LabelTable(labels, {})
    names = list(labels)
    terms = _terms(bench, [labels[n] for n in names], [preds.entries.get(n) for n in names], ctx)
    full = _resampled_main(bench.group, terms, np.arange(len(names))[None])[0]
    expected = score_predictions(bench, table, preds, ctx).main
    assert full == pytest.approx(expected, abs=1e-9, nan_ok=True) and not np.isnan(expected)


def test_paired_interval_scores_both_runs_on_the_same_resampled_clips(tiny_wheels):
    """The difference of two runs on the same clips: zero width against itself (an unpaired pair of intervals
    would not be), the protocol's difference on the full sample, and narrower than the runs' own intervals when
    the runs disagree on few clips."""
    bench, ctx = get_benchmark("cmumosi"), ScoringContext(tiny_wheels)
    labels, better = _sentiment_run(n_right=30)
    _, worse = _sentiment_run(n_right=26)  # the same clips, four more wrong
    assert paired_score_interval(bench, labels, better, better, ctx) == (0.0, 0.0, 0.0)
    diff, low, high = paired_score_interval(bench, labels, better, worse, ctx)
    assert diff == pytest.approx(score_predictions(bench, labels, better, ctx).main
                                 - score_predictions(bench, labels, worse, ctx).main)
    assert 0 < low <= diff <= high  # four clips differ, always in the same direction: the difference is > 0
    own = score_interval(bench, labels, better, ctx)
    assert high - low < own[1] - own[0]
    assert all(np.isnan(paired_score_interval(bench, LabelTable({}, {}), better, worse, ctx)))
