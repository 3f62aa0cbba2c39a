"""Per-group error rates (e.g. by gender) at one global threshold, with confidence intervals.

A deployed model has ONE threshold, so fairness is measured at that threshold: each group's FNMR on its
genuine pairs and FMR on its same-group impostor pairs. LFW's groups are small (91 female-female impostor
pairs on the test folds), so every rate comes with its pair count and a 95 % Wilson score interval; a gap
smaller than the intervals is not evidence of anything.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
UNLABELLED = "unlabelled"
METRICS = ("fnmr", "fmr")


def read_groups(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read an `identity,group` CSV (header required) into {identity: group}."""
    path = Path(path)
    if not path.is_file():
        raise EdgefaceError(f"groups CSV not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EdgefaceError(f"cannot read groups CSV {path}: {e}") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or [c.strip() for c in rows[0][:2]] != ["identity", "group"]:
        raise EdgefaceError(f"{path}: first line must be the header 'identity,group'")
    groups: dict[str, str] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise EdgefaceError(f"{path}:{n}: expected 'identity,group', got {','.join(row)!r}")
        identity, group = row[0].strip(), row[1].strip()
        if groups.get(identity, group) != group:
            raise EdgefaceError(f"{path}:{n}: identity {identity!r} is in two groups")
        groups[identity] = group
    if not groups:
        raise EdgefaceError(f"{path}: no identities listed")
    return groups


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials.

    Chosen over the normal (Wald) interval because error counts here are often 0-5: Wald collapses to
    [0, 0] at k = 0, Wilson still says how large the rate could plausibly be.
    """
    if n <= 0:
        raise ValueError("Wilson interval needs n > 0")
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(n: int, errors: int) -> dict[str, Any]:
    if n == 0:
        return {"n": 0, "errors": 0, "rate": None, "ci95": None}
    lo, hi = wilson_interval(errors, n)
    return {"n": n, "errors": errors, "rate": errors / n, "ci95": [lo, hi]}


def group_of_pair(identities: tuple[str, str], same: bool, groups: dict[str, str]) -> str | None:
    """The group a pair counts for: its identity's or shared group, UNLABELLED, or None (cross-group)."""
    a, b = (groups.get(i) for i in identities)
    if a is None or b is None:
        return UNLABELLED
    if same or a == b:
        return a
    return None


def group_rates(
    identities: Sequence[tuple[str, str]],
    scores: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, str],
    threshold: float,
) -> dict[str, Any]:
    """FNMR/FMR per group at `threshold` (accept when score >= threshold).

    Genuine pairs count for their identity's group; impostor pairs count for a group only when both
    identities are in it. Impostor pairs across groups are counted (`cross_group_impostor`) but not
    scored, and pairs with an unlisted identity are counted as `unlabelled` and excluded.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if not len(identities) == s.size == y.size:
        raise ValueError("identities, scores and labels differ in length")
    accepted = s >= threshold
    genuine: dict[str, list[int]] = {}  # group -> [pairs, false non-matches]
    impostor: dict[str, list[int]] = {}  # group -> [pairs, false matches]
    unlabelled = {"genuine": 0, "impostor": 0}
    cross = 0
    for ids, same, acc in zip(identities, y, accepted, strict=True):
        g = group_of_pair(ids, bool(same), groups)
        if g == UNLABELLED:
            unlabelled["genuine" if same else "impostor"] += 1
        elif g is None:
            cross += 1
        elif same:
            c = genuine.setdefault(g, [0, 0])
            c[0] += 1
            c[1] += int(not acc)
        else:
            c = impostor.setdefault(g, [0, 0])
            c[0] += 1
            c[1] += int(acc)
    per_group: dict[str, dict[str, Any]] = {}
    for g in sorted(set(genuine) | set(impostor)):
        per_group[g] = {"fnmr": _rate(*genuine.get(g, [0, 0])), "fmr": _rate(*impostor.get(g, [0, 0]))}
    gap: dict[str, float | None] = {}
    for m in METRICS:
        rates = [r[m]["rate"] for r in per_group.values() if r[m]["rate"] is not None]
        gap[m] = (max(rates) - min(rates)) if len(rates) >= 2 else None
    return {
        "threshold": float(threshold),
        "groups": per_group,
        "gap": gap,
        "unlabelled": unlabelled,
        "cross_group_impostor": cross,
    }


COMPARE_RULE = (
    "for each metric (fnmr, fmr) a group is flagged when its rate rises (after - before > 0) by more than "
    "twice the mean change across groups, the mean weighted by each group's pair count (i.e. the change of "
    "the pooled rate over all labelled pairs); when the pooled rate falls, any group whose rate rises is "
    "flagged"
)


def compare_groups(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Put two `group_rates` results (e.g. fp32 and int8, each at its own threshold) side by side.

    The rule (also returned under "rule"): see COMPARE_RULE. Weighting by pair count makes the mean the
    change a user sees overall, and keeps the rule meaningful with two groups, where an unweighted mean
    would include half of the flagged group's own rise. Only groups present in both results are compared.
    """
    common = sorted(set(before["groups"]) & set(after["groups"]))
    out: dict[str, Any] = {"rule": COMPARE_RULE, "groups": {}, "mean_change": {}, "flagged": []}
    changes: dict[str, dict[str, float]] = {m: {} for m in METRICS}
    for m in METRICS:
        total, weighted = 0, 0.0
        for g in common:
            b, a = before["groups"][g][m], after["groups"][g][m]
            if b["rate"] is None or a["rate"] is None:
                continue
            d = a["rate"] - b["rate"]
            changes[m][g] = d
            weighted += d * b["n"]
            total += b["n"]
        out["mean_change"][m] = weighted / total if total else None
    for g in common:
        row: dict[str, Any] = {}
        for m in METRICS:
            b, a = before["groups"][g][m], after["groups"][g][m]
            d = changes[m].get(g)
            mean = out["mean_change"][m]
            flag = d is not None and mean is not None and d > 0 and d > 2 * mean
            row[m] = {"before": b["rate"], "after": a["rate"], "change": d, "n": a["n"], "flagged": flag}
            if flag:
                out["flagged"].append({"group": g, "metric": m, "change": d, "mean_change": mean})
        out["groups"][g] = row
    return out
