"""FNMR@FMR, its intervals, and the identity-folder pair lists (numpy only, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeface.errors import EdgefaceError
from edgeface.eval.dataset import genuine_pairs, impostor_count, make_pairs
from edgeface.eval.rates import (
    PairScores,
    det_curve,
    equal_error_rate,
    fnmr_at_fmr,
    threshold_at_fmr,
    threshold_at_fmr_bound,
)
from edgeface.eval.verification import tar_at_far


def test_threshold_at_fmr_lets_exactly_floor_fmr_m_impostors_pass() -> None:
    imp = np.linspace(-0.5, 0.5, 1000)  # distinct scores
    for fmr, k in ((1e-2, 10), (1e-3, 1), (2.5e-3, 2)):
        t = threshold_at_fmr(imp, fmr)
        assert t.allowed == k and t.false_matches == k == int(np.sum(imp >= t.threshold))
        assert t.resolved and t.fmr <= fmr
    t = threshold_at_fmr(imp, 1e-4)  # 1000 impostors cannot resolve 1e-4
    assert not t.resolved and t.false_matches == 0 and t.threshold > imp.max()


def test_ties_never_push_the_fmr_above_the_target() -> None:
    imp = np.r_[np.full(5, 0.9), np.linspace(0, 0.5, 995)]  # five impostors tied at the top
    t = threshold_at_fmr(imp, 2e-3)  # 2 may pass, but the top five pass or fail together
    assert t.false_matches == 0 and t.fmr <= 2e-3


def test_tar_at_far_uses_the_same_rule() -> None:
    rng = np.random.default_rng(0)
    g, i = rng.normal(0.6, 0.1, 300), rng.normal(0.0, 0.1, 3000)
    s, y = np.r_[g, i], np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    for far in (1e-3, 1e-2):
        tar, thr = tar_at_far(s, y, far)
        assert thr == threshold_at_fmr(i, far).threshold
        assert math.isclose(tar, np.mean(g >= thr))


def _pairs(g: np.ndarray, i: np.ndarray, n_ids: int, seed: int = 0) -> PairScores:
    rng = np.random.default_rng(seed)
    gi = rng.integers(0, n_ids, g.size)
    ii = rng.integers(0, n_ids, (i.size, 2))
    return PairScores(g, i, gi, ii, n_ids)


def test_fnmr_at_fmr_counts_intervals_and_resolution() -> None:
    rng = np.random.default_rng(1)
    g, i = rng.normal(0.5, 0.15, 500), rng.normal(0.0, 0.1, 5000)
    out = fnmr_at_fmr(_pairs(g, i, 50), bootstrap=200, seed=3)
    assert list(out) == ["1e-02", "1e-03", "1e-04"]
    for key, r in out.items():
        assert r["genuine"] == 500 and r["impostor"] == 5000
        assert r["false_non_matches"] == int(np.sum(g < r["threshold"]))
        assert math.isclose(r["fnmr"], r["false_non_matches"] / 500)
        lo, hi = r["ci95"]
        assert 0 <= lo <= hi <= 1
        assert r["ci95_fixed_threshold"][0] <= r["fnmr"] <= r["ci95_fixed_threshold"][1]
        assert r["resolved"] == (key != "1e-04") and r["impostors_needed"] == round(1 / float(key))
    # a stricter FMR never lowers the FNMR
    assert out["1e-02"]["fnmr"] <= out["1e-03"]["fnmr"] <= out["1e-04"]["fnmr"]
    # the bootstrap is seeded: same seed, same interval; none asked, none given
    assert fnmr_at_fmr(_pairs(g, i, 50), bootstrap=200, seed=3)["1e-02"]["ci95"] == out["1e-02"]["ci95"]
    assert fnmr_at_fmr(_pairs(g, i, 50), bootstrap=0)["1e-02"]["ci95"] is None


def test_bootstrap_interval_is_wider_when_errors_share_identities() -> None:
    """Ten false non-matches all from one identity are less certain than ten spread over ten identities:
    the subject bootstrap sees it, a binomial interval cannot."""
    n_ids = 40
    g = np.full(400, 0.8)
    ids_spread = np.repeat(np.arange(n_ids), 10)
    g_low = g.copy()
    g_low[::40] = 0.05  # ten low genuine scores, one per identity 0, 4, 8, ...
    i = np.random.default_rng(2).normal(0.0, 0.1, 4000)
    imp_ids = np.random.default_rng(3).integers(0, n_ids, (4000, 2))
    spread = PairScores(g_low, i, ids_spread, imp_ids, n_ids)
    clustered_ids = ids_spread.copy()
    clustered_ids[::40] = 0  # the same ten low scores, all from identity 0
    clustered = PairScores(g_low, i, clustered_ids, imp_ids, n_ids)
    a = fnmr_at_fmr(spread, (1e-2,), 500, 0)["1e-02"]
    b = fnmr_at_fmr(clustered, (1e-2,), 500, 0)["1e-02"]
    assert a["fnmr"] == b["fnmr"] == 10 / 400
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(b) > 1.5 * width(a)


def test_det_and_eer() -> None:
    rng = np.random.default_rng(4)
    g, i = rng.normal(0.5, 0.1, 1000), rng.normal(0.0, 0.1, 1000)
    fmr, fnmr = det_curve(g, i)
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(fnmr) <= 0)
    e = equal_error_rate(g, i)
    assert 0.005 < e["eer"] < 0.01  # two unit-variance classes 5 sigma apart: about 0.6 %
    fn, fm = np.mean(g < e["threshold"]), np.mean(i >= e["threshold"])
    assert abs(fn - fm) < 0.005


def test_pairs_all_genuine_and_all_impostors_when_few() -> None:
    ident = np.array([0, 0, 0, 1, 1, 2])
    p = make_pairs(ident, max_impostors=100)
    assert not p.sampled and len(p.genuine) == 3 + 1 and len(p.impostor) == impostor_count(ident) == 11
    assert np.all(ident[p.genuine[:, 0]] == ident[p.genuine[:, 1]])
    assert np.all(ident[p.impostor[:, 0]] != ident[p.impostor[:, 1]])
    assert len({tuple(r) for r in p.impostor}) == 11 and np.all(p.impostor[:, 0] < p.impostor[:, 1])


def test_impostor_sampling_is_seeded_distinct_and_uniform() -> None:
    ident = np.repeat(np.arange(60), 5)  # 300 images: 44,250 impostor pairs
    a = make_pairs(ident, max_impostors=20_000, seed=7)
    b = make_pairs(ident, max_impostors=20_000, seed=7)
    c = make_pairs(ident, max_impostors=20_000, seed=8)
    assert a.sampled and len(a.impostor) == 20_000 and a.impostor_possible == 44_250
    assert np.array_equal(a.impostor, b.impostor) and not np.array_equal(a.impostor, c.impostor)
    assert len({tuple(r) for r in a.impostor}) == 20_000
    assert np.all(ident[a.impostor[:, 0]] != ident[a.impostor[:, 1]])
    # uniform over pairs: every image takes part in about 2 * 20000 / 300 = 133 of them
    per_image = np.bincount(a.impostor.ravel(), minlength=300)
    assert 90 < per_image.min() and per_image.max() < 180
    assert len(genuine_pairs(ident)) == 60 * 10


def test_impostor_count_bounds() -> None:
    with pytest.raises(EdgefaceError):
        make_pairs(np.array([0, 1]), max_impostors=0)


def _population(rng: np.random.Generator, people: int = 80) -> tuple[np.ndarray, np.ndarray, int]:
    """Impostor scores of a synthetic population whose people differ in how alike they look to others
    (a per-person offset, as in Doddington's zoo) and in how many images they have (1-12)."""
    images = rng.integers(1, 13, people)
    identity = np.repeat(np.arange(people), images)
    offset = rng.normal(0.0, 0.05, people)[identity] + rng.normal(0.0, 0.02, identity.size)
    iu = np.triu_indices(identity.size, 1)
    keep = identity[iu[0]] != identity[iu[1]]
    a, b = iu[0][keep], iu[1][keep]
    scores = rng.normal(0.0, 0.1, a.size) + offset[a] + offset[b]
    return scores, np.stack([identity[a], identity[b]], axis=1), people


def test_people_level_bound_holds_the_fmr_on_other_people() -> None:
    """Calibrated on one population, measured on fresh ones drawn alike: the point threshold misses the
    target about half the time, the 95 % people-level bound rarely. Fails if the bound ignored that pairs
    share people (a pair-level bound would sit barely above the point threshold)."""
    rng = np.random.default_rng(3)
    fmr, held_point, held_bound = 1e-2, 0, 0
    tests = [_population(rng)[0] for _ in range(30)]
    for _ in range(8):
        scores, ids, n = _population(rng)
        point, bound = threshold_at_fmr_bound(scores, ids, n, fmr, 0.95, replicates=100, seed=0)
        assert bound >= point.threshold
        for t in tests:
            held_point += float((t >= point.threshold).mean()) <= fmr
            held_bound += float((t >= bound).mean()) <= fmr
    total = 8 * len(
        tests
    )  # measured: point 115 of 240, bound 211 (a bootstrap of people under-covers a little)
    assert held_point < 0.65 * total and held_bound >= 0.8 * total, (held_point, held_bound, total)
    p0, b0 = threshold_at_fmr_bound(scores, ids, n, fmr, 0.0)
    assert b0 == p0.threshold
    with pytest.raises(ValueError):
        threshold_at_fmr_bound(scores, ids, n, fmr, 1.0)
