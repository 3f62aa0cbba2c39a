"""Error rates at operating points, the way NIST FRVT 1:1 reports them: FNMR at a fixed FMR.

numpy only. Conventions (those of edgeface.eval.verification): a pair is accepted when score >= threshold;
rates are fractions; genuine = same identity.

- **The threshold at an FMR target** (`threshold_at_fmr`) is the smallest one whose impostor accept rate
  is <= the target: with m impostor pairs at most k = floor(fmr * m) may pass, so it sits just above the
  (k+1)-th highest impostor score. Every FMR-driven threshold in edgeface (TAR@FAR, FNMR@FMR, the exporter's
  and `edgeface threshold`'s calibration) is this one function.
- **Resolution**: with m impostor pairs the smallest FMR that can be told from zero is 1/m. A target below
  it is reported as not `resolved`: the threshold then sits above every impostor, which is the most that
  the data can say, not a measurement of the target.
- **Confidence intervals.** At a *fixed* threshold (the artifact's shipped one, per-group rates) an error
  count is binomial: Wilson score interval, as edgeface.eval.groups. FNMR *at an FMR target* also carries
  the threshold's own uncertainty (it is estimated from the same impostors), and pairs share identities,
  so they are not independent: there the interval comes from a subject bootstrap (ISO/IEC 19795-1, NIST
  FRVT), which resamples identities with replacement and weighs each pair by how often its identities were
  drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeface.eval.groups import wilson_interval

FMR_TARGETS = (1e-2, 1e-3, 1e-4)  # what NIST FRVT 1:1 tabulates
BOOTSTRAP = 1000


def fmr_key(fmr: float) -> str:
    """1e-3 -> '1e-03': the JSON key of an FMR target (the same format as TAR@FAR keys)."""
    return f"{fmr:.0e}"


@dataclass(frozen=True)
class FmrThreshold:
    threshold: float
    allowed: int  # impostor pairs the target lets pass: floor(fmr * m)
    false_matches: int  # impostor pairs that do pass (ties can make it fewer than allowed)
    impostors: int
    resolved: bool  # m >= 1/fmr: the data can tell this target from zero

    @property
    def fmr(self) -> float:
        return self.false_matches / self.impostors


def threshold_at_fmr(impostor_scores: np.ndarray, fmr: float) -> FmrThreshold:
    """The smallest threshold whose impostor accept rate (score >= threshold) is <= `fmr`.

    Impostors with tied scores pass or fail together, so with ties the achieved FMR can be below the
    target, never above it. Fewer than 1/fmr impostor pairs: no impostor may pass (threshold just above the
    highest) and `resolved` is False.
    """
    s = np.asarray(impostor_scores, np.float64).reshape(-1)
    if s.size == 0:
        raise ValueError("an FMR threshold needs impostor scores")
    if not np.isfinite(s).all():
        raise ValueError("impostor scores contain NaN or inf")
    if not 0.0 < fmr < 1.0:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    m = s.size
    k = int(np.floor(fmr * m + 1e-9))  # tolerate fmr * m landing a hair under an integer
    desc = -np.sort(-s)
    threshold = float(np.nextafter(desc[k], np.inf)) if k < m else float(desc[-1])
    passed = int(np.count_nonzero(s >= threshold))
    return FmrThreshold(threshold, k, passed, m, resolved=fmr * m >= 1.0 - 1e-9)


def rate(errors: int, n: int) -> dict[str, Any]:
    """{n, errors, rate, ci95 (Wilson)}; rate and ci95 are None when there are no pairs."""
    if n == 0:
        return {"n": 0, "errors": 0, "rate": None, "ci95": None}
    lo, hi = wilson_interval(errors, n)
    return {"n": int(n), "errors": int(errors), "rate": errors / n, "ci95": [lo, hi]}


def rates_at_threshold(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> dict[str, Any]:
    """FNMR on the genuine and FMR on the impostor scores at one fixed threshold, with Wilson intervals."""
    g = np.asarray(genuine, np.float64)
    i = np.asarray(impostor, np.float64)
    return {
        "threshold": float(threshold),
        "fnmr": rate(int(np.count_nonzero(g < threshold)), g.size),
        "fmr": rate(int(np.count_nonzero(i >= threshold)), i.size),
    }


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> dict[str, float]:
    """The operating point where FMR and FNMR cross (their mean at the threshold where they are closest)."""
    g = np.sort(np.asarray(genuine, np.float64))
    i = np.sort(np.asarray(impostor, np.float64))
    cuts = np.unique(np.concatenate([g, i]))
    fnmr = np.searchsorted(g, cuts, side="left") / g.size  # genuine scores below each cut
    fmr = 1.0 - np.searchsorted(i, cuts, side="left") / i.size  # impostor scores at or above it
    j = int(np.argmin(np.abs(fnmr - fmr)))
    return {"eer": float((fnmr[j] + fmr[j]) / 2), "threshold": float(cuts[j])}


def det_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every distinct score, threshold decreasing: FMR rises, FNMR falls."""
    g = np.sort(np.asarray(genuine, np.float64))
    i = np.sort(np.asarray(impostor, np.float64))
    cuts = np.unique(np.concatenate([g, i]))[::-1]
    fmr = 1.0 - np.searchsorted(i, cuts, side="left") / i.size
    fnmr = np.searchsorted(g, cuts, side="left") / g.size
    return fmr, fnmr


@dataclass
class PairScores:
    """Scores of the comparable pairs and, for the bootstrap, the identity of each side of each pair."""

    genuine: np.ndarray  # (g,) scores
    impostor: np.ndarray  # (m,)
    genuine_ids: np.ndarray  # (g,) identity index of the genuine pairs
    impostor_ids: np.ndarray  # (m, 2) identity indices of the impostor pairs
    n_identities: int


def fnmr_at_fmr(
    pairs: PairScores,
    targets: tuple[float, ...] = FMR_TARGETS,
    bootstrap: int = BOOTSTRAP,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """FNMR at each FMR target with pair counts, the achieved FMR and two 95 % intervals.

    `ci95`: subject bootstrap (threshold re-estimated in every replicate; None when `bootstrap` is 0);
    `ci95_fixed_threshold`: Wilson at the threshold found on all pairs.
    """
    g = np.asarray(pairs.genuine, np.float64)
    out: dict[str, dict[str, Any]] = {}
    boot = _subject_bootstrap(pairs, targets, bootstrap, seed) if bootstrap > 0 else None
    for n, fmr in enumerate(targets):
        t = threshold_at_fmr(pairs.impostor, fmr)
        errors = int(np.count_nonzero(g < t.threshold))
        fixed = rate(errors, g.size)
        ci = None
        if boot is not None:
            finite = boot[n][np.isfinite(boot[n])]
            ci = (
                [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
                if finite.size
                else None
            )
        out[fmr_key(fmr)] = {
            "fmr_target": fmr,
            "threshold": t.threshold,
            "fnmr": fixed["rate"],
            "false_non_matches": errors,
            "genuine": int(g.size),
            "impostor": t.impostors,
            "false_matches": t.false_matches,
            "fmr": t.fmr,
            "resolved": t.resolved,
            "impostors_needed": int(np.ceil(1.0 / fmr - 1e-9)),
            "ci95": ci,
            "ci95_fixed_threshold": fixed["ci95"],
        }
    return out


def threshold_at_fmr_bound(
    impostor: np.ndarray,
    impostor_ids: np.ndarray,
    n_identities: int,
    fmr: float,
    confidence: float,
    replicates: int = 200,
    seed: int = 0,
) -> tuple[FmrThreshold, float]:
    """(the point threshold at `fmr`, a threshold that holds `fmr` with `confidence` over people).

    Impostor pairs share people, and people differ in how easily they are mistaken for others, so an FMR
    measured on m pairs is far less certain than m independent trials would make it (on LFW: a Wilson
    interval over pairs of +-3 % where resampling people gives -30/+50 %). The bound is the `confidence`
    quantile of the thresholds calibrated on people resampled with replacement (the subject bootstrap of
    the FNMR intervals), never below the point threshold: on another set of people like these, the FMR
    stays at or below the target with about that confidence. It does not cover a different mix of
    people, e.g. one person in a tenth of the comparisons. `confidence` 0: the point threshold itself.
    """
    point = threshold_at_fmr(impostor, fmr)
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0, 1), got {confidence}")
    if confidence == 0.0 or replicates < 1:
        return point, point.threshold
    scores = np.asarray(impostor, np.float64)
    order = np.argsort(-scores, kind="stable")
    found = [
        t[0]
        for _, t in _replicate_thresholds(
            scores[order], np.asarray(impostor_ids)[order], n_identities, (fmr,), replicates, seed
        )
    ]
    finite = np.asarray([t for t in found if np.isfinite(t)])
    bound = float(np.quantile(finite, confidence)) if finite.size else point.threshold
    return point, float(min(max(bound, point.threshold), 1.0))


def fmr_people_interval(
    impostor: np.ndarray,
    impostor_ids: np.ndarray,
    n_identities: int,
    threshold: float,
    replicates: int = BOOTSTRAP,
    seed: int = 0,
) -> list[float]:
    """95 % interval of the FMR at a fixed threshold with people resampled (pairs sharing people are not
    independent trials, so a Wilson interval over pairs is far too narrow when a few people are in many
    pairs)."""
    hit = np.asarray(impostor, np.float64) >= threshold
    out = []
    for _, wi in _people_resampled(np.asarray(impostor_ids), n_identities, replicates, seed):
        if wi.sum() > 0:
            out.append(float((wi * hit).sum() / wi.sum()))
    return [float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))] if out else [np.nan, np.nan]


def _people_resampled(
    pair_ids: np.ndarray, n: int, replicates: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each replicate of the subject bootstrap: (draws per identity, the weight of each pair), the
    identities drawn with replacement and a pair weighted by how often its two people were drawn."""
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        yield w, w[pair_ids[:, 0]] * w[pair_ids[:, 1]]


def _replicate_thresholds(
    i_sorted: np.ndarray,
    i_ids: np.ndarray,
    n: int,
    targets: tuple[float, ...],
    replicates: int,
    seed: int,
) -> Iterator[tuple[np.ndarray, list[float]]]:
    """For each identity-resampled replicate: (draws per identity, the threshold at each target, NaN when
    the replicate drew no impostor pair). `i_sorted` descending, `i_ids` in the same order."""
    for w, wi in _people_resampled(i_ids, n, replicates, seed):
        ti = wi.sum()
        if ti <= 0:
            yield w, [np.nan] * len(targets)
            continue
        ci = np.cumsum(wi)  # impostor weight at or above each (descending) score
        found = []
        for fmr in targets:
            # the first descending position whose cumulated weight exceeds what the target lets pass
            k = int(np.searchsorted(ci, fmr * ti * (1 + 1e-12), side="right"))
            found.append(np.nextafter(i_sorted[k], np.inf) if k < i_sorted.size else i_sorted[-1])
        yield w, found


def _subject_bootstrap(
    pairs: PairScores, targets: tuple[float, ...], replicates: int, seed: int
) -> list[np.ndarray]:
    """FNMR at each target in `replicates` identity-resampled replicates (NaN where a replicate drew no
    genuine or no impostor pair)."""
    g_order = np.argsort(pairs.genuine, kind="stable")
    g_sorted = np.asarray(pairs.genuine, np.float64)[g_order]
    g_ids = np.asarray(pairs.genuine_ids)[g_order]
    i_order = np.argsort(-np.asarray(pairs.impostor, np.float64), kind="stable")
    i_sorted = np.asarray(pairs.impostor, np.float64)[i_order]
    i_ids = np.asarray(pairs.impostor_ids)[i_order]
    out = [np.full(replicates, np.nan) for _ in targets]
    replicas = _replicate_thresholds(i_sorted, i_ids, pairs.n_identities, targets, replicates, seed)
    for r, (w, thresholds) in enumerate(replicas):
        wg = w[g_ids]
        tg = wg.sum()
        if tg <= 0:
            continue
        cg = np.concatenate([[0.0], np.cumsum(wg)])  # genuine weight below each (ascending) score
        for n_t, thr in enumerate(thresholds):
            if np.isfinite(thr):
                out[n_t][r] = cg[int(np.searchsorted(g_sorted, thr, side="left"))] / tg
    return out
