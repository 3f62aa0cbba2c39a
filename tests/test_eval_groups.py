"""Per-group rates: counting on the real LFW test folds, Wilson intervals, the before/after flag rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.data.lfw import TEST_FOLDS, read_pairs, select_folds
from edgeface.errors import EdgefaceError
from edgeface.eval.groups import compare_groups, group_rates, read_groups, wilson_interval

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"


def test_wilson_interval_matches_hand_computation() -> None:
    # k=2, n=10, z=1.959964: p=0.2, z^2/n=0.384146, denominator 1.384146,
    # centre (0.2 + 0.192073)/1.384146 = 0.283260,
    # half z*sqrt(0.016 + 0.009604)/1.384146 = 1.959964*0.160011/1.384146 = 0.226578
    lo, hi = wilson_interval(2, 10)
    assert lo == pytest.approx(0.283260 - 0.226578, abs=2e-6)
    assert hi == pytest.approx(0.283260 + 0.226578, abs=2e-6)
    # k=0: lower bound 0, upper z^2/n / (1 + z^2/n) = 0.384146/1.384146 = 0.277532 (Wald would say 0)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.277532, abs=2e-6)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


def test_group_counts_on_lfw_test_folds() -> None:
    pairs = select_folds(read_pairs(LFW / "pairs.txt"), TEST_FOLDS)
    groups = read_groups(LFW / "gender.csv")
    labels = np.array([p.same for p in pairs])
    # at threshold 0.5 with all scores 0.0 every genuine pair is a false non-match and no impostor passes
    r = group_rates([p.identities for p in pairs], np.zeros(len(pairs)), labels, groups, threshold=0.5)
    g = r["groups"]
    assert (g["F"]["fnmr"]["n"], g["M"]["fnmr"]["n"]) == (381, 1119)
    assert (g["F"]["fmr"]["n"], g["M"]["fmr"]["n"]) == (91, 830)
    assert g["F"]["fnmr"]["rate"] == 1.0 and g["M"]["fmr"]["rate"] == 0.0
    genuine = 381 + 1119 + r["unlabelled"]["genuine"]
    impostor = 91 + 830 + r["cross_group_impostor"] + r["unlabelled"]["impostor"]
    assert genuine == 1500 and impostor == 1500


def _toy(fnm: dict[str, int], fm: dict[str, int], n: int = 100) -> dict:
    """Groups A and B with n genuine and n same-group impostor pairs each, given error counts."""
    identities, scores, labels = [], [], []
    for g in ("A", "B"):
        for i in range(n):
            identities.append((f"{g}{i}", f"{g}{i}"))
            scores.append(0.0 if i < fnm[g] else 1.0)
            labels.append(True)
            identities.append((f"{g}{i}", f"{g}{i + 1}"))
            scores.append(1.0 if i < fm[g] else 0.0)
            labels.append(False)
    identities += [("A0", "B0"), ("A0", "nobody")]  # cross-group and unlabelled impostors
    scores += [1.0, 1.0]
    labels += [False, False]
    groups = {f"{g}{i}": g for g in ("A", "B") for i in range(n + 1)}
    return group_rates(identities, np.array(scores), np.array(labels), groups, threshold=0.5)


def test_group_rates_counts_errors_and_gap() -> None:
    r = _toy({"A": 3, "B": 1}, {"A": 0, "B": 2})
    assert r["groups"]["A"]["fnmr"]["rate"] == pytest.approx(0.03)
    assert r["groups"]["B"]["fmr"]["errors"] == 2
    assert r["gap"]["fnmr"] == pytest.approx(0.02) and r["gap"]["fmr"] == pytest.approx(0.02)
    assert r["cross_group_impostor"] == 1 and r["unlabelled"] == {"genuine": 0, "impostor": 1}
    lo, hi = r["groups"]["A"]["fnmr"]["ci95"]
    assert lo < 0.03 < hi


def test_compare_groups_flags_disproportionate_rise() -> None:
    before = _toy({"A": 1, "B": 1}, {"A": 1, "B": 1})
    # FNMR: A +4 pp, B unchanged -> pooled change +2 pp; 4 > 2*2 is false: not flagged.
    # FMR: A +6 pp, B +1 pp -> pooled +3.5 pp; A: 6 > 7 false. Neither flagged...
    after = _toy({"A": 5, "B": 1}, {"A": 7, "B": 2})
    cmp = compare_groups(before, after)
    assert cmp["flagged"] == []
    assert cmp["mean_change"]["fnmr"] == pytest.approx(0.02)
    # ... but when B improves while A gets worse, A's rise is more than twice the pooled change.
    after = _toy({"A": 5, "B": 0}, {"A": 1, "B": 1})
    cmp = compare_groups(before, after)
    assert [(f["group"], f["metric"]) for f in cmp["flagged"]] == [("A", "fnmr")]
    assert cmp["groups"]["A"]["fnmr"]["before"] == pytest.approx(0.01)
    assert cmp["groups"]["A"]["fnmr"]["after"] == pytest.approx(0.05)
    assert "twice" in cmp["rule"]


def test_read_groups_errors(tmp_path: Path) -> None:
    bad_header = tmp_path / "g.csv"
    bad_header.write_text("name,gender\nA,F\n")
    with pytest.raises(EdgefaceError, match="header"):
        read_groups(bad_header)
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(EdgefaceError):
        read_groups(binary)
    with pytest.raises(EdgefaceError, match="not found"):
        read_groups(tmp_path / "missing.csv")
