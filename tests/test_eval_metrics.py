"""Verification metrics on cases small enough to check by hand (expected values reasoned in comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeface.eval.verification import (
    best_threshold,
    cosine_agreement,
    cosine_scores,
    kfold_accuracy,
    roc_curve,
    tar_at_far,
)


def test_cosine_scores_rowwise_and_zero_vector() -> None:
    left = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    right = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    # orthogonal -> 0; 45 degrees -> 1/sqrt(2); same direction, other length -> 1; zero vector -> 0
    np.testing.assert_allclose(cosine_scores(left, right), [0.0, 1 / math.sqrt(2), 1.0, 0.0], atol=1e-12)


def test_cosine_scores_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        cosine_scores(np.ones((3, 4)), np.ones((2, 4)))


def test_cosine_agreement_mean_and_min() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    test = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # cosines 1, 1, 1/sqrt(2)
    got = cosine_agreement(ref, test)
    assert got["min"] == pytest.approx(1 / math.sqrt(2))
    assert got["mean"] == pytest.approx((2 + 1 / math.sqrt(2)) / 3)


def test_best_threshold_midpoint_and_lowest_on_ties() -> None:
    # sorted: 0.1 F, 0.35 T, 0.4 F, 0.8 T. Correct pairs per cut: accept all 2, cut above 0.1 -> 3,
    # above 0.35 -> 2, above 0.4 -> 3, none -> 2. Two cuts tie at 3: the lowest wins, midway 0.1..0.35.
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([False, False, True, True])
    assert best_threshold(scores, labels) == pytest.approx(0.225)


def test_best_threshold_separable_and_all_accepted() -> None:
    assert best_threshold(np.array([0.2, 0.3, 0.7, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)
    # only genuine pairs: accepting everything is perfect, so the threshold sits below the lowest score
    assert best_threshold(np.array([0.5, 0.6]), np.array([1, 1])) < 0.5


def test_best_threshold_never_splits_equal_scores() -> None:
    # a threshold cannot separate the two 0.5s, so the best realisable accuracy is 3/4, not 4/4
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    labels = np.array([False, False, True, True])
    t = best_threshold(scores, labels)
    assert np.mean((scores >= t) == labels) == pytest.approx(0.75)


def test_kfold_threshold_comes_from_the_other_folds() -> None:
    # fold 1: 0.2 F, 0.6 T   fold 2: 0.25 F, 0.7 T   fold 3 (inverted): 0.5 F, 0.4 T
    # fold 1 held out: train 0.25F 0.4T 0.5F 0.7T -> lowest best cut between 0.25 and 0.4 -> 0.325 -> 2/2
    # fold 2 held out: train 0.2F 0.4T 0.5F 0.6T -> 0.3 -> 0.25 rejected, 0.7 accepted -> 2/2
    # fold 3 held out: train 0.2F 0.25F 0.6T 0.7T -> 0.425 -> 0.5F accepted, 0.4T rejected -> 0/2
    scores = np.array([0.2, 0.6, 0.25, 0.7, 0.5, 0.4])
    labels = np.array([False, True, False, True, False, True])
    folds = np.array([1, 1, 2, 2, 3, 3])
    mean, std, thresholds = kfold_accuracy(scores, labels, folds)
    assert mean == pytest.approx(2 / 3)
    assert std == pytest.approx(math.sqrt(2 / 9))  # population std of (1, 1, 0)
    np.testing.assert_allclose(thresholds, [0.325, 0.3, 0.425])


def test_kfold_needs_two_folds() -> None:
    with pytest.raises(ValueError):
        kfold_accuracy(np.array([0.1, 0.9]), np.array([0, 1]), np.array([6, 6]))


IMPOSTOR = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
GENUINE = np.array([0.5, 0.85, 0.92, 0.97, 0.99])


def _pairs(impostor: np.ndarray = IMPOSTOR, genuine: np.ndarray = GENUINE) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([impostor, genuine])
    labels = np.r_[np.zeros(impostor.size, bool), np.ones(genuine.size, bool)]
    return scores, labels


def test_tar_at_far_allows_floor_far_times_impostors() -> None:
    scores, labels = _pairs()
    # FAR 0.1 of 10 impostors: one may pass (0.95), so accept scores above 0.9: 0.92, 0.97, 0.99 -> 3/5
    tar, t = tar_at_far(scores, labels, 0.1)
    assert tar == pytest.approx(0.6)
    assert 0.9 < t <= 0.92
    assert np.mean(IMPOSTOR >= t) <= 0.1
    # FAR 0.05 of 10: 0.5 impostors -> none may pass; accept above 0.95: 0.97, 0.99 -> 2/5
    tar, t = tar_at_far(scores, labels, 0.05)
    assert tar == pytest.approx(0.4)
    assert t > 0.95
    # FAR 1: everything accepted
    assert tar_at_far(scores, labels, 1.0)[0] == pytest.approx(1.0)


def test_tar_at_far_ties_stay_under_target() -> None:
    # the two highest impostors tie at 0.9: accepting one means accepting both (FAR 0.2 > 0.1), so
    # neither passes and the achieved FAR (0) is below the target
    impostor = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9])
    scores, labels = _pairs(impostor)
    tar, t = tar_at_far(scores, labels, 0.1)
    assert np.mean(impostor >= t) == 0.0
    assert tar == pytest.approx(0.6)  # 0.92, 0.97, 0.99


def test_roc_curve_one_point_per_distinct_score() -> None:
    # descending: 0.9 T, 0.8 F, 0.8 T (tie), 0.3 F; two genuine, two impostor
    scores = np.array([0.9, 0.8, 0.8, 0.3])
    labels = np.array([True, False, True, False])
    far, tar, thr = roc_curve(scores, labels)
    np.testing.assert_allclose(far, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(tar, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.3])


def test_roc_agrees_with_tar_at_far() -> None:
    rng = np.random.default_rng(0)
    scores, labels = _pairs(rng.normal(0.1, 0.1, 2000), rng.normal(0.6, 0.15, 500))
    far, tar, _ = roc_curve(scores, labels)
    for target in (1e-3, 1e-2, 0.1):
        got, _ = tar_at_far(scores, labels, target)
        assert got == pytest.approx(tar[far <= target + 1e-12].max())
