"""The pure metric functions: hand-computed values, sklearn's documented values, and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from affectverse_ds.eval import metrics

A, B, C = frozenset({"a"}), frozenset({"b"}), frozenset({"c"})
EMPTY = frozenset()


# ----------------------------------------------------------------------------- accuracy / weighted F1

def test_weighted_f1_matches_sklearn_documented_example():
    # sklearn's f1_score docstring: y_true=[0,1,2,0,1,2], y_pred=[0,2,1,0,0,1] -> weighted 0.2666...
    y_true, y_pred = [0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 0, 1]
    assert metrics.weighted_f1(y_true, y_pred) == pytest.approx(0.26666666666666666)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(1 / 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1, max_size=60))
def test_accuracy_and_weighted_f1_agree_with_sklearn(pairs):
    """sklearn.metrics is the oracle (zero_division=0: a class never predicted has F1 0, as ours)."""
    from sklearn.metrics import accuracy_score, f1_score

    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    assert metrics.weighted_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, average="weighted", zero_division=0))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=3, max_size=40))
def test_pearson_agrees_with_numpy(pairs):
    x, y = np.array(pairs).T
    assume(x.std() > 1e-3 and y.std() > 1e-3)  # constant sides: NaN, tested by hand below
    assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)


def test_weighted_f1_class_only_predicted_costs_precision_but_has_no_weight():
    # a: F1 2/3 (support 2), b: F1 1 (support 2), c: support 0
    assert metrics.weighted_f1(list("aabb"), list("acbb")) == pytest.approx((2 * 2 / 3 + 2 * 1) / 4)


def test_weighted_f1_binary_by_hand():
    # True: tp 2, support 3, predicted 3 -> 2/3; False: tp 0 -> 0; weighted 3 * 2/3 / 4
    assert metrics.weighted_f1([True, True, True, False], [True, False, True, True]) == pytest.approx(0.5)


def test_text_and_numbers_do_not_crash_and_compare_as_text():
    assert metrics.accuracy(["1", "2"], [1, 3]) == pytest.approx(0.5)


def test_empty_inputs_give_nan_and_length_mismatch_raises():
    assert math.isnan(metrics.weighted_f1([], []))
    assert math.isnan(metrics.accuracy([], []))
    with pytest.raises(ValueError, match="samples"):
        metrics.weighted_f1([1, 2], [1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
def test_weighted_f1_properties(pairs):
    y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    score = metrics.weighted_f1(y_true, y_pred)
    assert 0.0 <= score <= 1.0
    assert metrics.weighted_f1(y_true, y_true) == pytest.approx(1.0)
    # renaming the classes changes nothing
    rename = {0: "w", 1: "x", 2: "y", 3: "z"}
    assert metrics.weighted_f1([rename[t] for t in y_true], [rename[p] for p in y_pred]) == pytest.approx(score)


# ----------------------------------------------------------------------------- HIT rate

def test_hit_rate_wheel_skips_empty_gt_and_extra_predictions_cost_nothing():
    gt = [A, A | B, EMPTY, C]
    pred = [A | B | C, B, A, EMPTY]  # hit, hit, skipped, miss (empty prediction)
    rate, scored = metrics.hit_rate_wheel(gt, pred)
    assert scored == 3
    assert rate == pytest.approx(2 / 3)


def test_hit_rate_means_over_wheels_and_counts_per_wheel():
    score = metrics.hit_rate([[A, B], [A, EMPTY]], [[A, A], [EMPTY, A]])
    assert score.per_wheel == pytest.approx((0.5, 0.0))
    assert score.scored == (2, 1)
    assert score.mean == pytest.approx(0.25)


def test_hit_rate_all_neutral_gt_scores_nothing():
    rate, scored = metrics.hit_rate_wheel([EMPTY, EMPTY], [A, EMPTY])
    assert scored == 0 and math.isnan(rate)
    assert math.isnan(metrics.hit_rate([[EMPTY]] * 5, [[A]] * 5).mean)


def test_hit_rate_length_mismatch_raises():
    with pytest.raises(ValueError):
        metrics.hit_rate_wheel([A], [A, B])


# ----------------------------------------------------------------------------- OV set scores

def test_set_prf_wheel_by_hand():
    gt = [A | B, A, EMPTY]
    pred = [A, EMPTY, A]  # P 1, R 1/2; P 0, R 0 (empty prediction); skipped
    f, p, r, scored = metrics.set_prf_wheel(gt, pred)
    assert (p, r, scored) == (pytest.approx(0.5), pytest.approx(0.25), 2)
    assert f == pytest.approx(2 * 0.5 * 0.25 / 0.75)


def test_set_prf_perfect_nothing_and_all_empty():
    assert metrics.set_prf_wheel([A, B], [A, B])[:3] == (1.0, 1.0, 1.0)
    assert metrics.set_prf_wheel([A, B], [EMPTY, C])[:3] == (0.0, 0.0, 0.0)
    f, p, r, scored = metrics.set_prf_wheel([EMPTY], [A])
    assert scored == 0 and math.isnan(f) and math.isnan(p) and math.isnan(r)


def test_set_prf_means_over_wheels():
    score = metrics.set_prf([[A], [A | B]], [[A], [A]])
    assert score.precision.per_wheel == (1.0, 1.0)
    assert score.recall.per_wheel == (1.0, 0.5)
    assert score.f.mean == pytest.approx((1.0 + 2 * 0.5 / 1.5) / 2)


# ----------------------------------------------------------------------------- sentiment

@pytest.mark.parametrize("word, value", [
    ("positive", 1), (" Positive ", 1), ("negative", -1), ("neutral", 0), ("mixed", 0), ("", 0), (None, 0),
])
def test_polarity_value(word, value):
    assert metrics.polarity_value(word) == value


def test_sentiment_scores_skip_zero_gt_and_count_neutral_as_negative():
    gt = [1.2, -0.4, 0.0, 2.0, -3.0, 0.5]
    pred = [1, 0, 1, -1, -1, 0]
    score = metrics.sentiment_scores(gt, pred)
    assert (score.scored, score.skipped) == (5, 1)
    # gt>0: T F T F T; pred>0: T F F F F -> acc 3/5; F1(T) 1/2 (support 3), F1(F) 2/3 (support 2)
    assert score.acc2_nonzero == pytest.approx(0.6)
    assert score.wf1_nonzero == pytest.approx((3 * 0.5 + 2 * 2 / 3) / 5)


def test_sentiment_scores_all_zero_gt():
    score = metrics.sentiment_scores([0.0, 0.0], [1, -1])
    assert (score.scored, score.skipped) == (0, 2)
    assert math.isnan(score.wf1_nonzero) and math.isnan(score.acc2_nonzero)


# ----------------------------------------------------------------------------- conventional

def test_discrete_conventional_counts_neutral_as_a_class():
    out = metrics.discrete_conventional(["neutral", "happy", "sad", "neutral"], ["neutral", "happy", "", "sad"])
    assert out["acc"] == pytest.approx(0.5)
    # neutral F1 2/3 (support 2), happy 1, sad 0 -> (4/3 + 1) / 4
    assert out["wf1"] == pytest.approx((2 * 2 / 3 + 1) / 4)


def test_sentiment_conventional_by_hand():
    gt, pred = [2.0, -1.0, 0.0, 1.0], [1.5, -0.5, 0.5, -1.0]
    out = metrics.sentiment_conventional(gt, pred)
    assert out["acc2_has0"] == pytest.approx(3 / 4)
    assert out["acc2_non0"] == pytest.approx(2 / 3)
    assert out["mae"] == pytest.approx(0.875)
    assert out["corr"] == pytest.approx(np.corrcoef(gt, pred)[0, 1])
    # has0: gt>=0 T F T T, pred>=0 T F T F -> True F1 4/5 (support 3), False F1 2/3 (support 1)
    assert out["f1_has0"] == pytest.approx((3 * 0.8 + 2 / 3) / 4)


def test_pearson_constant_or_short_is_nan():
    assert math.isnan(metrics.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))
    assert math.isnan(metrics.pearson([1.0], [2.0]))
    assert metrics.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx(1.0)
