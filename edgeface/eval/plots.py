"""ROC plot of a verification report, written atomically (no half-written PNG on failure, and a full or
read-only disk is one error line)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

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
