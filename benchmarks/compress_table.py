"""The compression acceptance table (docs/compression.md): fp32 vs PTQ w8a8, PTQ w6a6, QAT w6a6 (+ pruning).

Every compressed row is made by the exact `edgeface` command printed beside it, then all rows are measured
by `edgeface.compress.report` against ONE fp32 evaluation (same pairs: LFW folds 6-10, flip TTA; cosine to
fp32 on the 3,890 test images). Wall times are those of the commands, on the machine that ran this.
Flip TTA is off by default here (--flip turns it on): on the shared 2-core build CPU, evaluating four
models with it did not fit in the time available; fp32 and compressed rows always use the same setting.

    python benchmarks/compress_table.py                 # quantize (skips outputs that exist), evaluate, write
    python benchmarks/compress_table.py --stage table   # only rebuild the Markdown from cached reports
    python benchmarks/compress_table.py --rows w8a8_ptq,w6a6_ptq --qat-minutes 30

Outputs land in --work (checkpoints, per-row report JSON) and --doc. Anything in --doc from the line
"## Quantization: CNN-transformer hybrids" (benchmarks/quantize_hybrid.py) or, without it, from
"## Pruning" on is kept (the pruning section is written by benchmarks of `edgeface prune`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = "../shared/models/mobilefacenet_ms1m.pt"
LFW = "../shared/data/lfw"


def rows(work: Path, qat_minutes: float | None) -> dict[str, list[str]]:
    base = ["edgeface", "quantize", "-m", "mobilefacenet", "-w", WEIGHTS, "--calib", LFW, "--quiet"]
    ptq = ["--method", "ptq", "--calibration", "mse", "--num-images", "512"]
    qat = [
        "--method",
        "qat",
        "--calibration",
        "mse",
        "--num-images",
        "512",
        "--loss",
        "cosine",
        "--epochs",
        "1",
    ]
    qat += ["--batch-size", "32", "--lr", "5e-5"] + (
        ["--max-minutes", str(qat_minutes)] if qat_minutes else []
    )
    return {
        "w8a8_ptq": base + ptq + ["--bits", "w8a8", "-o", str(work / "w8a8_ptq.pt")],
        "w6a6_ptq": base + ptq + ["--bits", "w6a6", "-o", str(work / "w6a6_ptq.pt")],
        "w6a6_qat_kd": base + qat + ["--bits", "w6a6", "-o", str(work / "w6a6_qat_kd.pt")],
    }


def quantize(name: str, cmd: list[str], work: Path, force: bool) -> None:
    out = Path(cmd[cmd.index("-o") + 1])
    meta = work / f"{name}.cmd.json"
    if out.is_file() and meta.is_file() and not force:
        print(f"[{name}] exists, skipped: {out}")
        return
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    import resource

    start, load = time.perf_counter(), os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=ROOT, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    info = {
        "command": shlex.join(cmd),
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu, 1),
        "load_avg_start": load,
        "load_avg_end": os.getloadavg()[0],
    }
    meta.write_text(json.dumps(info))


def evaluate(names: list[str], work: Path, fp32_only: bool = False, flip: bool = False) -> None:
    import torch

    from edgeface.compress.report import compression_report, evaluate_model
    from edgeface.models.loading import load_model

    torch.manual_seed(0)
    fp32 = load_model("mobilefacenet", ROOT / WEIGHTS)
    base_file = work / "fp32.eval.pt"
    if base_file.is_file():
        baseline = torch.load(base_file, weights_only=False)
    else:
        baseline = evaluate_model(fp32.model, fp32.spec, ROOT / LFW, progress="fp32", flip=flip)
        torch.save(baseline, base_file.with_suffix(".tmp"))
        os.replace(base_file.with_suffix(".tmp"), base_file)  # other stages poll for this file
    if fp32_only:
        return
    for name in names:
        rep_file = work / f"{name}.report.json"
        meta_file = work / f"{name}.cmd.json"
        if rep_file.is_file() or not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text())
        ckpt = Path(shlex.split(meta["command"])[shlex.split(meta["command"]).index("-o") + 1])
        comp = load_model("mobilefacenet", ckpt)
        rep = compression_report(
            fp32,
            comp.model,
            comp.spec,
            ROOT / LFW,
            wall_s=meta["wall_s"],
            title=name,
            baseline=baseline,
            command=meta["command"],
            flip=flip,
        )
        rep["record"] = {k: v for k, v in comp.checkpoint["transforms"][-1].items() if k != "plan"}
        rep["rows"][1]["cpu_s"] = meta.get("cpu_s")
        rep["machine"] = {k: meta.get(k) for k in ("load_avg_start", "load_avg_end")}
        rep_file.write_text(json.dumps(rep, indent=2, default=float))
        print(
            f"[{name}] acc {rep['rows'][1]['acc'] * 100:.2f} % cos {rep['rows'][1]['cos_mean']:.4f}",
            flush=True,
        )


CRITERIA = {  # issue 3 acceptance: row -> (max accuracy drop in pp, min mean cosine to fp32)
    "w8a8_ptq": (0.1, 0.995),
    "w6a6_qat_kd": (0.3, None),
}


def acceptance(reports: dict[str, dict]) -> list[str]:
    """One line per criterion, computed from the measured rows (nothing typed by hand)."""
    lines = ["Acceptance (issue 3):", ""]
    for name, (max_drop, min_cos) in CRITERIA.items():
        if name not in reports:
            lines.append(f"- {name}: not measured in this run")
            continue
        row = reports[name]["rows"][1]
        ok = row["acc_drop_pp"] <= max_drop and (min_cos is None or row["cos_mean"] >= min_cos)
        cos = f", mean cosine {row['cos_mean']:.4f} (>= {min_cos})" if min_cos else ""
        lines.append(
            f"- {name}: accuracy drop {row['acc_drop_pp']:.2f} pp (<= {max_drop}){cos}: "
            f"{'met' if ok else 'NOT met'}"
        )
    return lines


def _load(report: dict) -> str:
    m = report.get("machine") or {}
    if m.get("load_avg_start") is None:
        return "not recorded"
    return f"{m['load_avg_start']:.1f} / {m['load_avg_end']:.1f}"


def qat_notes(reports: dict[str, dict]) -> list[str]:
    """How much of the epoch a time-budgeted QAT run actually trained (from its checkpoint record)."""
    lines = []
    for name, r in reports.items():
        rec = r.get("record") or {}
        if rec.get("method") != "qat":
            continue
        epoch = rec.get("train_images", 0) // max(1, rec.get("batch_size", 1) * rec.get("world_size", 1))
        lines += [
            f"{name}: trained {rec.get('steps')} steps of batch {rec.get('batch_size')} "
            f"({rec.get('steps', 0) / max(1, epoch):.0%} of one {epoch}-step epoch over "
            f"{rec.get('train_images')} images) before its --max-minutes budget ended training; the wall "
            "time includes the 512-image PTQ initialisation.",
            "",
        ]
    return lines


def write_doc(names: list[str], work: Path, doc: Path) -> None:
    from edgeface.compress.report import groups_markdown, table_markdown

    reports = {
        n: json.loads((work / f"{n}.report.json").read_text())
        for n in names
        if (work / f"{n}.report.json").is_file()
    }
    first = next(iter(reports.values()), None)
    keep = ""
    if doc.is_file():
        text = doc.read_text()
        for marker in ("\n## Quantization: CNN-transformer hybrids", "\n## Pruning"):
            if marker in text:
                keep = text[text.index(marker) + 1 :]
                break
    lines = [
        "# Compression",
        "",
        "How edgeface quantizes a face model and what it costs. Every number below was produced by "
        "`python benchmarks/compress_table.py` (the exact commands are listed); the model is "
        "`mobilefacenet_ms1m` (fp32: 99.37 % on LFW folds 6-10 with its reference ONNX).",
        "",
        "## Quantization: how",
        "",
        "- **Fake quantization, own modules** (not torch.ao: deprecated, and its FX int8 convert is wrong "
        "for PReLU nets). Values sit exactly on the integer grid; int6 is the 6-bit grid stored in int8.",
        "- **Weights** symmetric per output channel (narrow range, zero point 0); **activations** affine per "
        "tensor, wherever an int8 runtime holds an integer tensor (`quant_plan` lists them). Placement is "
        "decided per operator from one table (`edgeface/quant_ops.py`, TORCH_OPS) and from one traced "
        "forward pass: only floating-point tensors computed from the input are ever quantized (never "
        "shapes, `H * W`, indices or constants); an op runs in int8 when the table has an integer kernel "
        "for it and, for kernels that must write integers (conv, add, concat, pooling), when an integer op "
        "reads its output; every float input of an int8 op is quantized on the way in, every int8 output "
        "after its fused ReLU/ReLU6/PReLU. On a CNN this is the model input, every conv/linear output and "
        "every residual add; on a hybrid, see the hybrid section below.",
        "- **BatchNorm** folded before quantizing: conv->BN into the conv, BN2d->flatten->linear and "
        "linear->BN1d into the linear (IResNet's bn2 and `features`); a BN *before* a zero-padded conv "
        "(IResNet's bn1) is not foldable exactly and becomes an explicit, quantized 1x1 depthwise conv.",
        "- **PTQ**: one pass over 512 compression-split images records min/max and a histogram per "
        "activation; `minmax`, `percentile` or `mse` picks each range; weights use MSE-searched per-channel "
        "clipping with `mse`; then empirical bias correction moves quantization's mean shift into the "
        "biases.",
        "- **w6a6**: the first and last weight layers (and their outputs) stay at 8 bits; `--layer-bits` "
        "overrides any layer; `--bits mixed --size-budget` chooses 8/6 bits per layer from measured "
        "sensitivity (embedding cosine loss with only that layer quantized).",
        "- **QAT**: from the PTQ model, straight-through estimator, distilled from the fp32 model on the "
        "compression split with cosine KD (`--loss cosine`) or label-free EKD (`--loss ekd`, "
        "`cosine+ekd`); runs under `torchrun` (DDP, gloo or nccl).",
        "",
        "## Quantization: usage",
        "",
        "```bash",
        "# PTQ, int8 weights and activations, 512 calibration images of the compression split",
        "edgeface quantize -m mobilefacenet -w ../shared/models/mobilefacenet_ms1m.pt \\",
        "    --calib ../shared/data/lfw --method ptq --bits w8a8 -o mfn_w8a8.pt \\",
        "    --report mfn_w8a8.md   # also writes mfn_w8a8.json",
        "# QAT at w6a6, distilled from fp32 (cosine KD; --loss ekd for label-free EKD), one epoch",
        "edgeface quantize -m mobilefacenet -w ../shared/models/mobilefacenet_ms1m.pt \\",
        "    --calib ../shared/data/lfw --method qat --bits w6a6 --loss cosine --epochs 1 -o mfn_w6a6_qat.pt",
        "# the same on several processes / GPUs / machines (DDP; gloo on CPU, nccl on GPU)",
        "torchrun --nproc-per-node 2 -m edgeface.cli.main quantize ... --method qat ...",
        "# mixed precision for a size budget (bytes, or a ratio of the fp32 size), with overrides",
        "edgeface quantize ... --bits mixed --size-budget 0.2 --layer-bits conv1.0=8",
        "# any PyTorch model as module:factory (here EdgeFace-XS, a CNN-transformer hybrid); a layer, a",
        "# graph node or an op type can be left float by name (repeatable), e.g. when an error suggests it",
        "PYTHONPATH=../shared/models/edgeface_xs edgeface quantize -m edgeface_xs:edgeface_xs \\",
        "    -w ../shared/models/edgeface_xs/edgeface_xs.pt --calib ../shared/data/lfw -o xs_w8a8.pt \\",
        "    --keep-float model.head.fc   # also: --smooth auto|off|ALPHA, --fallback 4 (0 = off)",
        "# the result is a checkpoint every command takes",
        "edgeface eval -m mobilefacenet -w mfn_w8a8.pt --pairs ../shared/data/lfw/pairs.txt \\",
        "    --images ../shared/data/lfw/aligned112 --flip",
        "```",
        "",
        "A quantized checkpoint stores the base model name, the transform list (a pruned parent's records "
        'first, then `{"kind": "quant", "plan": {per-layer bits}, ...}`) and the state dict '
        "(folded weights, weight scales, activation scales/zero points); loading replays the structure and "
        "loads the weights strictly. `--plan FILE.json` writes every scale for exporters "
        "(`edgeface.compress.quant.quant_plan`).",
        "",
        "## Quantization: results",
        "",
    ]
    if first is None:
        lines += ["Not measured yet: run `python benchmarks/compress_table.py`.", ""]
        _write(doc, lines, keep)
        return
    table_rows = [first["rows"][0]] + [r["rows"][1] for r in reports.values()]
    lines += [
        f"Evaluation: LFW pairs folds 6-10 ({table_rows[0]['n_pairs']} pairs), "
        f"{'flip TTA' if first.get('flip') else 'no flip TTA'}, same code for every "
        f"row; cosine = embedding cosine to fp32 on the {first['n_test_images']} test images (no flip). "
        "Size: "
        "weights at their stored bit width (int6 packed), biases/scales/other parameters 32-bit. Wall time: "
        "the command's, on the shared 2-core CPU of the build machine (other jobs running, so treat as an "
        "upper bound).",
        "",
        table_markdown(table_rows),
        "",
        *acceptance(reports),
        "",
        "1-minute load average of the 2-core machine when each command started / ended (CPU s = user + "
        "system seconds of the command, all threads; it is what an idle machine would need, spread over "
        "2 cores): " + "; ".join(f"{n} {_load(r)}" for n, r in reports.items()) + ".",
        "",
        *qat_notes(reports),
        "Commands:",
        "",
        "```bash",
    ]
    for r in reports.values():
        lines.append(r["command"])
    lines += ["```", ""]
    for name, r in reports.items():
        rec = r.get("record", {})
        extra = ", ".join(f"{k}={rec[k]}" for k in ("steps", "loss", "lr", "batch_size") if k in rec)
        lines += [
            f"### {name}: per-group error rates" + (f" ({extra})" if extra else ""),
            "",
            groups_markdown(r["groups"]),
            "",
        ]
    _write(doc, lines, keep)


def _write(doc: Path, lines: list[str], keep: str) -> None:
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + ("\n" + keep if keep else ""))
    os.replace(tmp, doc)
    print(f"wrote {doc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeface_compress"))
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "compression.md")
    ap.add_argument("--stage", choices=["all", "quantize", "evaluate", "fp32", "table"], default="all")
    ap.add_argument("--rows", default="w8a8_ptq,w6a6_ptq,w6a6_qat_kd")
    ap.add_argument(
        "--qat-minutes",
        type=float,
        default=None,
        help="Wall-clock budget for the QAT row (default: the full epoch).",
    )
    ap.add_argument("--force", action="store_true", help="Re-run commands whose outputs exist.")
    ap.add_argument(
        "--flip",
        action="store_true",
        help="Flip TTA in evaluation (doubles its time; the committed table was made without).",
    )
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    table = rows(args.work, args.qat_minutes)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = set(names) - set(table)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; known: {', '.join(table)}")
    if args.stage in ("all", "quantize"):
        for n in names:
            quantize(n, table[n], args.work, args.force)
    if args.stage == "fp32":
        evaluate([], args.work, fp32_only=True, flip=args.flip)
    if args.stage in ("all", "evaluate"):
        evaluate(names, args.work, flip=args.flip)
    if args.stage in ("all", "table"):
        write_doc(list(table), args.work, args.doc)


if __name__ == "__main__":
    main()
