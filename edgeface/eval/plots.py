"""ROC and DET plots of verification reports, rendered to PNG bytes in memory so the caller writes them
together with its other outputs, all or nothing (and a full or read-only disk is one error line)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.io import atomic_write

if TYPE_CHECKING:
    from edgeface.eval.lfw_eval import VerificationReport


def plot_roc(
    report: VerificationReport, path: str | os.PathLike[str], title: str = "LFW verification"
) -> Path:
    """Write `roc_png` to `path` atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise EdgefaceError(f"folder for the ROC plot does not exist: {path.parent}")
    png = roc_png(report, title)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(png))


def roc_png(report: VerificationReport, title: str = "LFW verification") -> bytes:
    """TAR against FAR on a log FAR axis (the operating points that matter are at FAR 1e-3..1e-2), as PNG
    bytes: rendered in memory so a caller can write it together with other outputs, all or nothing."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display on a server or a Pi
    import matplotlib.pyplot as plt

    far, tar = report.roc
    n_neg = int((~report.labels).sum()) if report.labels is not None else 0
    floor = 1.0 / n_neg if n_neg else 1e-4  # FAR = 0 cannot be drawn on a log axis
    keep = far > 0
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    try:
        # A step curve: between two ROC points the best TAR at that FAR is the left point's.
        ax.plot(
            far[keep], tar[keep], lw=1.6, drawstyle="steps-post", label=f"ROC (acc {report.acc * 100:.2f} %)"
        )
        for key, t in report.tar_at_far.items():
            f = float(key)
            ax.plot([f], [t], "o", ms=6, label=f"TAR@FAR={key}: {t * 100:.2f} %")
            ax.axvline(f, color="0.8", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(min(floor, min(float(k) for k in report.tar_at_far) if report.tar_at_far else 1), 1.0)
        lo = min([*tar[keep][:1], *report.tar_at_far.values()], default=0.0)  # zoom on the drawn part
        ax.set_ylim(max(0.0, lo - 0.01), 1.001)
        ax.set_xlabel("false accept rate (impostor pairs)")
        ax.set_ylabel("true accept rate (genuine pairs)")
        ax.set_title(f"{title} ({report.n_pairs} pairs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


@dataclass
class Curve:
    """One model's curve for the DET / ROC plots. `points`: marked operating points (label, FMR, FNMR,
    optional (lo, hi) FNMR interval)."""

    label: str
    fmr: np.ndarray
    fnmr: np.ndarray
    n_genuine: int
    n_impostor: int
    points: list[tuple[str, float, float, tuple[float, float] | None]] = field(default_factory=list)


def _figure() -> tuple[Any, Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or a Pi
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.5), dpi=110)
    return plt, fig, ax


def _png(plt: Any, fig: Any) -> bytes:
    import io

    try:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def det_png(curves: list[Curve], title: str) -> bytes:
    """DET: FNMR against FMR, both on log axes (as NIST FRVT 1:1 plots them), one step curve per model;
    rates of 0 are drawn at half the smallest measurable rate (1/(2n)) so they stay on the axes."""
    plt, fig, ax = _figure()
    fmr_floor = min(0.5 / max(c.n_impostor, 1) for c in curves)
    fnmr_floor = min(0.5 / max(c.n_genuine, 1) for c in curves)
    for n, c in enumerate(curves):
        color = f"C{n % 10}"
        x = np.maximum(c.fmr, fmr_floor)
        y = np.maximum(c.fnmr, fnmr_floor)
        ax.plot(x, y, drawstyle="steps-post", lw=1.5, color=color, label=c.label)
        for label, fmr, fnmr, ci in c.points:
            yerr = None
            if ci is not None:
                lo, hi = max(ci[0], fnmr_floor), max(ci[1], fnmr_floor)
                yerr = [[max(0.0, max(fnmr, fnmr_floor) - lo)], [max(0.0, hi - max(fnmr, fnmr_floor))]]
            ax.errorbar(
                [max(fmr, fmr_floor)],
                [max(fnmr, fnmr_floor)],
                yerr=yerr,
                fmt="o",
                ms=4,
                color=color,
                capsize=3,
            )
            if len(curves) == 1:
                ax.annotate(label, (max(fmr, fmr_floor), max(fnmr, fnmr_floor)), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(fmr_floor, 1.0)
    ax.set_ylim(fnmr_floor, 1.0)
    ax.set_xlabel("false match rate (FMR, impostor pairs)")
    ax.set_ylabel("false non-match rate (FNMR, genuine pairs)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png(plt, fig)


def roc_overlay_png(curves: list[Curve], title: str) -> bytes:
    """ROC: TAR (1 - FNMR) against a log FAR axis, one step curve per model."""
    plt, fig, ax = _figure()
    floor = min(1.0 / max(c.n_impostor, 1) for c in curves)
    lo = 1.0
    for n, c in enumerate(curves):
        keep = c.fmr > 0
        tar = 1.0 - c.fnmr[keep]
        ax.plot(c.fmr[keep], tar, drawstyle="steps-post", lw=1.5, color=f"C{n % 10}", label=c.label)
        if tar.size:
            lo = min(lo, float(tar[0]))
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(max(0.0, lo - 0.01), 1.001)
    ax.set_xlabel("false accept rate (impostor pairs)")
    ax.set_ylabel("true accept rate (genuine pairs)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(plt, fig)
