"""One table per compression run: what was gained (size, MACs) against what was lost (accuracy, fairness).

Both models are measured by the same code on the same pairs (LFW folds 6-10 by default, flip TTA on) so
the drop is the compression's alone. Besides accuracy and TAR@FAR, the report gives the cosine of each
compressed embedding to its fp32 embedding (mean and minimum: one broken image hides inside a good mean)
and the per-group FNMR/FMR of both models side by side with counts and Wilson intervals, flagging a group
whose error rate rises by more than twice the mean change (edgeface.eval.groups.compare_groups).

Public API:
    evaluate_model(model, spec, lfw_root, ...) -> dict        (embeddings cached for cosine agreement)
    compression_report(fp32, compressed, compressed_spec, lfw_root, ..., baseline=None) -> dict
    to_markdown(report) -> str
    write_report(report, path)   -> writes path (.md) and path with .json, atomically
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeface.data.lfw import TEST_FOLDS
from edgeface.io import atomic_write_text, dumps_json
from edgeface.models.loading import LoadedModel
from edgeface.spec import ModelSpec


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _embedder(
    model: nn.Module,
    spec: ModelSpec,
    cache: dict[Path, np.ndarray],
    batch_size: int,
    progress: str | None,
    flip: bool = True,
):
    """Flip-TTA embeddings for verification; the plain embeddings are kept for the cosine agreement."""
    from tqdm.auto import tqdm

    from edgeface.runtime.preprocess import normalize, read_image

    nchw = spec.replace(layout="NCHW")  # torch models take NCHW whatever the artifact layout

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    def embed(paths: Sequence[Path]) -> np.ndarray:
        model.eval()
        out = []
        bar = tqdm(total=len(paths), desc=progress, unit="img", disable=progress is None, leave=False)
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            faces = [read_image(p) for p in chunk]
            plain = run(normalize(faces, nchw))
            mirrored = run(normalize(faces, nchw, flip=True)) if flip else 0.0
            for p, e in zip(chunk, plain, strict=True):
                cache[Path(p)] = e
            out.append(plain + mirrored)
            bar.update(len(chunk))
        bar.close()
        return np.concatenate(out).astype(np.float32)

    return embed


def evaluate_model(
    model: nn.Module,
    spec: ModelSpec,
    lfw_root: str | os.PathLike[str],
    folds: Sequence[int] = TEST_FOLDS,
    groups_csv: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    progress: str | None = None,
    flip: bool = True,
) -> dict[str, Any]:
    """LFW metrics (flip TTA unless `flip` is off), per-group rates, plain embeddings of all test images."""
    from edgeface.eval.lfw_eval import evaluate_lfw

    root = Path(lfw_root)
    groups_csv = (
        groups_csv
        if groups_csv is not None
        else (root / "gender.csv" if (root / "gender.csv").is_file() else None)
    )
    cache: dict[Path, np.ndarray] = {}
    start = time.perf_counter()
    rep = evaluate_lfw(
        _embedder(model, spec, cache, batch_size, progress, flip),
        root / "pairs.txt",
        root / "aligned112",
        folds,
        groups_csv,
    )
    paths = sorted(cache)
    return {
        "verification": rep.to_dict(),
        "embeddings": np.stack([cache[p] for p in paths]),
        "paths": [str(p) for p in paths],
        "eval_s": round(time.perf_counter() - start, 1),
        "flip": flip,
    }


def model_row(name: str, model: nn.Module, spec: ModelSpec, evaluation: dict[str, Any]) -> dict[str, Any]:
    from edgeface.compress.quant.plan import count_macs, model_size_bytes

    v = evaluation["verification"]
    h, w = spec.input_size
    return {
        "name": name,
        "precision": spec.precision,
        "params": parameter_count(model),
        "macs": count_macs(model, (spec.channels, h, w)),
        "size_bytes": model_size_bytes(model),
        "acc": v["acc"],
        "acc_std": v["acc_std"],
        "tar_at_far_1e-3": v["tar_at_far"].get("1e-03"),
        "threshold": v["threshold"],
        "n_pairs": v["n_pairs"],
    }


def compression_report(
    fp32: LoadedModel,
    compressed: nn.Module,
    compressed_spec: ModelSpec,
    lfw_root: str | os.PathLike[str],
    wall_s: float | None = None,
    title: str = "compressed",
    folds: Sequence[int] = TEST_FOLDS,
    groups_csv: str | os.PathLike[str] | None = None,
    baseline: dict[str, Any] | None = None,
    progress: bool = True,
    command: str | None = None,
    flip: bool = True,
) -> dict[str, Any]:
    """Compare `compressed` with `fp32` on the same LFW folds. `baseline` (an `evaluate_model` result of
    the fp32 model) skips re-evaluating it when several compressed models are compared with one float one."""
    from edgeface.eval.groups import compare_groups
    from edgeface.eval.verification import cosine_agreement, cosine_scores

    if baseline is None:
        baseline = evaluate_model(
            fp32.model,
            fp32.spec,
            lfw_root,
            folds,
            groups_csv,
            progress="fp32" if progress else None,
            flip=flip,
        )
    ev = evaluate_model(
        compressed,
        compressed_spec,
        lfw_root,
        folds,
        groups_csv,
        progress=title if progress else None,
        flip=flip,
    )
    if baseline.get("flip", True) != flip:
        raise ValueError("fp32 baseline and compressed model evaluated with different flip settings")
    if ev["paths"] != baseline["paths"]:
        raise ValueError("fp32 and compressed models were evaluated on different images")
    agreement = cosine_agreement(baseline["embeddings"], ev["embeddings"])
    worst = int(np.argmin(cosine_scores(baseline["embeddings"], ev["embeddings"])))
    before, after = baseline["verification"]["groups"], ev["verification"]["groups"]
    rows = [
        model_row("fp32", fp32.model, fp32.spec, baseline),
        model_row(title, compressed, compressed_spec, ev),
    ]
    rows[1].update(
        cos_mean=agreement["mean"],
        cos_min=agreement["min"],
        wall_s=wall_s,
        acc_drop_pp=(rows[0]["acc"] - rows[1]["acc"]) * 100,
    )
    rows[0].update(cos_mean=1.0, cos_min=1.0, wall_s=None, acc_drop_pp=0.0)
    return {
        "title": title,
        "command": command,
        "folds": list(folds),
        "flip": flip,
        "rows": rows,
        "worst_image": Path(ev["paths"][worst]).name,
        "groups": {
            "fp32": before,
            "compressed": after,
            "comparison": compare_groups(before, after) if before and after else None,
        },
        "n_test_images": len(ev["paths"]),
    }


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}"


def table_markdown(rows: list[dict[str, Any]]) -> str:
    """Accuracy drop in pp against the first (fp32) row; CPU seconds only when some row has them."""
    cpu = any(r.get("cpu_s") is not None for r in rows)
    head = (
        "| model | params | MACs | size (bytes) | LFW acc % | drop pp | TAR@FAR=1e-3 % | cos mean | "
        "cos min | wall s |" + (" CPU s |" if cpu else "")
    )
    lines = [head, "|---|" + "---:|" * (9 + cpu)]
    for r in rows:
        wall = "" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
        cells = [
            r["name"],
            f"{r['params']:,}",
            f"{r['macs'] / 1e6:.1f} M",
            f"{r['size_bytes']:,}",
            _pct(r["acc"]),
            f"{(rows[0]['acc'] - r['acc']) * 100:.2f}",
            _pct(r["tar_at_far_1e-3"]),
            f"{r['cos_mean']:.4f}",
            f"{r['cos_min']:.4f}",
            wall,
        ]
        if cpu:
            cells.append("" if r.get("cpu_s") is None else f"{r['cpu_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(r: dict[str, Any] | None) -> str:
    if not r or r.get("rate") is None:
        return "n/a"
    lo, hi = r["ci95"]
    return f"{r['rate'] * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}] ({r['errors']}/{r['n']})"


def groups_markdown(groups: dict[str, Any]) -> str:
    before, after, cmp_ = groups.get("fp32"), groups.get("compressed"), groups.get("comparison")
    if not before or not after:
        return "_no group labels given_"
    lines = [
        f"Per group at each model's own accuracy threshold (fp32 {before['threshold']:.4f}, compressed "
        f"{after['threshold']:.4f}); rate % [95 % Wilson CI] (errors/pairs).",
        "",
        "| group | FNMR fp32 | FNMR compressed | FMR fp32 | FMR compressed | flagged |",
        "|---|---|---|---|---|---|",
    ]
    flagged = {(f["group"], f["metric"]) for f in (cmp_ or {}).get("flagged", [])}
    for g in sorted(set(before["groups"]) | set(after["groups"])):
        b, a = before["groups"].get(g, {}), after["groups"].get(g, {})
        flags = ", ".join(m.upper() for m in ("fnmr", "fmr") if (g, m) in flagged) or "no"
        lines.append(
            f"| {g} | {_cell(b.get('fnmr'))} | {_cell(a.get('fnmr'))} | {_cell(b.get('fmr'))} | "
            f"{_cell(a.get('fmr'))} | {flags} |"
        )
    if cmp_:
        mc = cmp_["mean_change"]
        fmt = {k: ("n/a" if v is None else f"{v * 100:+.2f} pp") for k, v in mc.items()}
        lines += ["", f"Mean change: FNMR {fmt['fnmr']}, FMR {fmt['fmr']}. Rule: {cmp_['rule']}."]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    c = rows[-1]
    out = [
        f"## {report['title']}",
        "",
        f"LFW folds {report['folds'][0]}-{report['folds'][-1]} ({rows[0]['n_pairs']} pairs, "
        f"{'flip TTA' if report.get('flip', True) else 'no flip TTA'}), "
        f"cosine to fp32 on {report['n_test_images']} test images (no flip). Size: weights at their stored "
        "bit width (6-bit weights counted packed, unquantized ones 32-bit), other parameters 32-bit.",
        "",
    ]
    if report.get("command"):
        out += ["```", report["command"], "```", ""]
    out += [
        table_markdown(rows),
        "",
        f"Accuracy drop {c['acc_drop_pp']:.2f} pp; lowest cosine on {report['worst_image']}.",
        "",
        groups_markdown(report["groups"]),
        "",
    ]
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`report.md` and `report.json` (same stem), each written atomically."""
    md = Path(path)
    js = md.with_suffix(".json")
    atomic_write_text(js, dumps_json(_jsonable(report)) + "\n")
    atomic_write_text(md, to_markdown(report))
    return md, js
