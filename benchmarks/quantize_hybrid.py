"""EdgeFace-XS (a CNN-transformer hybrid) through `edgeface quantize`: hybrid tables of docs/compression.md.

Two parts, both written into docs/compression.md between the markers of the section
"## Quantization: CNN-transformer hybrids" (the rest of the file is kept):

- rows: every row is the exact `edgeface quantize` command printed beside it (PTQ with the three
  calibrations, w6a6, mixed precision, QAT with cosine KD and with EKD), run with one thread
  (OMP_NUM_THREADS=1: the build machine is a shared 2-core CPU, where two threads were ~20x slower), then
  measured by `edgeface.compress.report` against one fp32 evaluation: LFW pairs folds 6-10 with flip TTA,
  cosine to fp32 on the 3,890 test images.
- ablation: the placement and accuracy-recovery decisions, measured in-process with the library API on a
  fixed subset (calibration images from the compression split, test-fold images for the cosine): what
  stays float, the LayerNorm migration, the float fallback.

    python benchmarks/quantize_hybrid.py                        # rows (skips outputs that exist) + table
    python benchmarks/quantize_hybrid.py --rows ptq_mse,qat_kd --qat-minutes 20
    python benchmarks/quantize_hybrid.py --stage ablation       # the ablation table
    python benchmarks/quantize_hybrid.py --stage table          # rebuild the Markdown from cached results
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
MODEL = "edgeface_xs:edgeface_xs"
MODEL_DIR = "../shared/models/edgeface_xs"
WEIGHTS = f"{MODEL_DIR}/edgeface_xs.pt"
LFW = "../shared/data/lfw"
BEGIN, END = "## Quantization: CNN-transformer hybrids", "<!-- end of the hybrid quantization section -->"


def rows(work: Path, qat_minutes: float) -> dict[str, list[str]]:
    base = ["edgeface", "quantize", "-m", MODEL, "-w", WEIGHTS, "--calib", LFW, "--quiet"]
    qat = ["--method", "qat", "--epochs", "1", "--batch-size", "32", "--lr", "1e-5"]
    qat += ["--max-minutes", f"{qat_minutes:g}"]
    return {
        "ptq_minmax": base + ["--calibration", "minmax", "-o", str(work / "ptq_minmax.pt")],
        "ptq_percentile": base + ["--calibration", "percentile", "-o", str(work / "ptq_percentile.pt")],
        "ptq_mse": base + ["--calibration", "mse", "-o", str(work / "ptq_mse.pt")],
        "ptq_w6a6": base + ["--bits", "w6a6", "-o", str(work / "ptq_w6a6.pt")],
        "mixed_0.29": base + ["--bits", "mixed", "--size-budget", "0.29", "-o", str(work / "mixed.pt")],
        "qat_kd": base + qat + ["--loss", "cosine", "-o", str(work / "qat_kd.pt")],
        "qat_ekd": base + qat + ["--loss", "ekd", "-o", str(work / "qat_ekd.pt")],
        "qat_kd_w6a6": base
        + qat[:-4]
        + ["--max-minutes", f"{qat_minutes:g}", "--bits", "w6a6", "--loss", "cosine"]
        + ["-o", str(work / "qat_kd_w6a6.pt")],
    }


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str((ROOT / MODEL_DIR).resolve()), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def quantize(name: str, cmd: list[str], work: Path, force: bool) -> None:
    import resource

    out = Path(cmd[cmd.index("-o") + 1])
    meta = work / f"{name}.cmd.json"
    if out.is_file() and meta.is_file() and not force:
        print(f"[{name}] exists, skipped: {out}")
        return
    shown = f"OMP_NUM_THREADS=1 PYTHONPATH={MODEL_DIR} " + shlex.join(cmd)
    print(f"[{name}] {shown}", flush=True)
    start, load = time.perf_counter(), os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=ROOT, env=env(), check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    info = {
        "command": shown,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 1),
        "load_avg_start": load,
        "load_avg_end": os.getloadavg()[0],
    }
    meta.write_text(json.dumps(info))


def _load_fp32():
    sys.path.insert(0, str((ROOT / MODEL_DIR).resolve()))
    from edgeface.models.loading import load_model

    return load_model(MODEL, ROOT / WEIGHTS)


def evaluate(names: list[str], work: Path) -> None:
    import torch

    from edgeface.compress.report import compression_report, evaluate_model
    from edgeface.models.loading import load_model

    torch.set_num_threads(1)
    fp32 = _load_fp32()
    base_file = work / "fp32.eval.pt"
    if base_file.is_file():
        baseline = torch.load(base_file, weights_only=False)
    else:
        baseline = evaluate_model(fp32.model, fp32.spec, ROOT / LFW, progress="fp32", flip=True)
        torch.save(baseline, base_file.with_suffix(".tmp"))
        os.replace(base_file.with_suffix(".tmp"), base_file)
    for name in names:
        rep_file, meta_file = work / f"{name}.report.json", work / f"{name}.cmd.json"
        if rep_file.is_file() or not meta_file.is_file():
            continue
        meta = json.loads(meta_file.read_text())
        args = shlex.split(meta["command"])
        comp = load_model(MODEL, Path(args[args.index("-o") + 1]))
        rep = compression_report(
            fp32,
            comp.model,
            comp.spec,
            ROOT / LFW,
            wall_s=meta["wall_s"],
            title=name,
            baseline=baseline,
            command=meta["command"],
            flip=True,
        )
        record = {k: v for k, v in comp.checkpoint["transforms"][-1].items() if k != "plan"}
        weights = comp.checkpoint["transforms"][-1]["plan"]["weights"]
        record["int_layers"] = len(weights)
        record["bits_count"] = {
            str(b): list(weights.values()).count(b) for b in sorted(set(weights.values()))
        }
        rep["record"] = record
        rep["rows"][1]["cpu_s"] = meta.get("cpu_s")
        rep["machine"] = {k: meta.get(k) for k in ("load_avg_start", "load_avg_end")}
        rep_file.write_text(json.dumps(rep, indent=2, default=float))
        row = rep["rows"][1]
        print(f"[{name}] acc {row['acc'] * 100:.2f} % cos {row['cos_mean']:.4f} min {row['cos_min']:.4f}")


# --- ablation: decisions measured with the library API ---------------------------------------------------
def _int_output_free(name: str, kind: str, axis: int | None = None):
    """A rule as shipped but whose integer kernel may write float: it is int8 whenever its input is."""
    from edgeface.quant_ops import TorchOpRule

    return TorchOpRule(kind, "ablation", weight_axis=0 if kind == "weighted" else None, channel_axis=axis,
                       int_output=False)  # fmt: skip


ABLATION = {  # name -> (what it changes, ptq keyword arguments, TORCH_OPS overrides: key -> kind or rule)
    "default": ("as shipped: the table, per-LayerNorm migration, fallback", {}, {}),
    "residual stream int8": (
        "convs and adds int8 even when only float ops read them (residual adds, depthwise convs)",
        {"fallback": 0.0},
        {"add": ("compute", None), "Conv2d": ("weighted", 1)},
    ),
    "no fallback": ("every Linear int8 (--fallback 0)", {"fallback": 0.0}, {}),
    "no migration, no fallback": ("--smooth off --fallback 0", {"smooth": None, "fallback": 0.0}, {}),
    "SmoothQuant alpha 0.5": ("one global alpha instead of per-LayerNorm choice", {"smooth": 0.5}, {}),
    "SmoothQuant alpha 0.8": ("one global alpha instead of per-LayerNorm choice", {"smooth": 0.8}, {}),
    "GELU int8": ("GELU as an integer op (fc1 output and GELU output quantized)", {}, {"GELU": "compute"}),
    "attention int8": ("attention products as integer ops (attn @ v int8)", {}, {"matmul": "compute"}),
    "calibration minmax": ("--calibration minmax", {"calibration": "minmax"}, {}),
}


def ablation(work: Path, calib_n: int, test_n: int) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import edgeface.quant_ops as qo
    from edgeface.compress.quant import ptq
    from edgeface.compress.quant.prepare import activation_quantizers
    from edgeface.compress.quant.ptq import load_batches, pick_images
    from edgeface.data.folders import compression_images
    from edgeface.data.lfw import TEST_FOLDS, read_pairs, select_folds

    torch.set_num_threads(1)
    fp32 = _load_fp32()
    lfw = ROOT / LFW
    calib = load_batches(pick_images(compression_images(lfw), calib_n), fp32.spec, 32)
    names = sorted(
        {n for p in select_folds(read_pairs(lfw / "pairs.txt"), TEST_FOLDS) for n in (p.left, p.right)}
    )
    pick = np.sort(np.random.default_rng(1).choice(len(names), test_n, replace=False))
    test = load_batches([lfw / "aligned112" / names[i] for i in pick], fp32.spec, 32)
    with torch.no_grad():
        ref = [fp32.model(x) for x in test]
    results = []
    for name, (what, kwargs, ops) in ABLATION.items():
        saved = dict(qo.TORCH_OPS)
        try:
            for op, kind in ops.items():
                if isinstance(kind, tuple):
                    qo.TORCH_OPS[op] = _int_output_free(op, *kind)
                else:
                    qo.TORCH_OPS[op] = qo.OpRule(kind, "ablation")
            start = time.perf_counter()
            q = ptq(fp32.model, fp32.spec, calib, **{"calibration": "mse", "progress": False, **kwargs})
            wall = time.perf_counter() - start
        finally:
            qo.TORCH_OPS.clear()
            qo.TORCH_OPS.update(saved)
        with torch.no_grad():
            cos = torch.cat([F.cosine_similarity(q(x), r) for x, r in zip(test, ref, strict=True)])
        record = q.edgeface_quant
        results.append(
            {
                "name": name,
                "what": what,
                "cos_mean": cos.mean().item(),
                "cos_min": cos.min().item(),
                "int_layers": len(record["plan"]["weights"]),
                "quantizers": len(activation_quantizers(q)),
                "fallback": sorted(record.get("fallback", {})),
                "wall_s": round(wall, 1),
            }
        )
        print(
            f"[ablation] {name}: cos {results[-1]['cos_mean']:.5f} min {results[-1]['cos_min']:.4f}",
            flush=True,
        )
    out = {"calib_images": calib_n, "test_images": test_n, "results": results}
    (work / "ablation.json").write_text(json.dumps(out, indent=2))


# --- the Markdown ---------------------------------------------------------------------------------------
def section(work: Path, names: list[str]) -> list[str]:
    from edgeface.compress.report import table_markdown

    reports = {
        n: json.loads((work / f"{n}.report.json").read_text())
        for n in names
        if (work / f"{n}.report.json").is_file()
    }
    lines = [BEGIN, ""]
    lines += [
        "EdgeFace-XS (`../shared/models/edgeface_xs`: EdgeNeXt blocks, channels-last LayerNorm -> Linear "
        "-> GELU -> Linear, cross-covariance attention with a per-head temperature, layer scale, shapes "
        "read from `x.shape`) goes through the same `edgeface quantize` as any model; nothing in the code "
        "names it. What the general mechanism does with it:",
        "",
        "- **Int8**: the Linear layers (MLP fc1/fc2, attention qkv/proj, the embedding head), weights per "
        "output channel on their last axis, inputs per tensor on the way in. Their outputs are written "
        "in float (ONNX Runtime runs DQ -> MatMul as MatMulIntegerToFloat), except the embedding's.",
        "- **Float**, per the table and the fixed point in `prepare.py`: LayerNorm, GELU, softmax, the "
        "attention products and their per-head temperature, the residual adds and the convs (patchify, "
        "depthwise, downsample): only float ops read their outputs, so an integer kernel there would "
        "only add rounding. The ablation below measures the alternatives.",
        "- **Folded**: layer-scale `gamma` into the Linear before it (exact, along its channel axis); the "
        "positional encoding (computed from the input's shape only) is a constant and never quantized.",
        "- **Recovered**: outlier channels after each LayerNorm migrate into the next Linear's weights, "
        "with the strength chosen per LayerNorm by the measured layer error (`--smooth`); the few Linear "
        "layers whose float input int8 cannot carry (measured loss >= 4x the mean per quantizer, "
        "`--fallback`) stay float, and `fallback` in the checkpoint record lists them.",
        "- **Errors**: a model that cannot be traced or run on a batch, or a layer that fails when "
        "quantized, ends in one `error:` line naming the layer (exit 1; traceback with `edgeface --debug`); "
        "`--keep-float NAME` leaves a layer, a graph node or an op type in float.",
        "- **Checkpoint**: the record adds `input_shape` (the analysis input), `keep_float` (user and "
        "fallback layers), `smooth`/`smoothed` and `fallback`; `quant_plan` adds per layer `channel_axis` "
        "and `activation_rank`, per quantizer the graph `tensor` it rounds, its `producer` op and its "
        "`readers`, and `float_ops` (every op computing on the input that stays float, with the reason). "
        "It reloads with `torch.load(weights_only=True)` when the same `--model` is given.",
        "",
    ]
    if reports:
        first = next(iter(reports.values()))
        table = [first["rows"][0]] + [r["rows"][1] for r in reports.values()]
        lines += [
            f"LFW pairs folds 6-10 ({table[0]['n_pairs']} pairs) with flip TTA; cosine = embedding cosine "
            f"to fp32 on the {first['n_test_images']} test images (no flip). Size: quantized weights at "
            "their bit width, everything else (the float convs, LayerNorms, biases, scales) 32-bit; MACs "
            "count convs and Linear layers only. Wall / CPU s: the command's, one thread, on the shared "
            "build machine.",
            "",
            table_markdown(table),
            "",
        ]
        for name, r in reports.items():
            rec = r.get("record", {})
            notes = [f"{rec.get('int_layers')} int layers {rec.get('bits_count')}"]
            if rec.get("fallback"):
                notes.append(f"float fallback: {', '.join(sorted(rec['fallback']))}")
            if rec.get("method") == "qat":
                per_epoch = rec.get("train_images", 0) // max(1, rec.get("batch_size", 1))
                notes.append(
                    f"{rec.get('steps')} QAT steps of batch {rec.get('batch_size')} "
                    f"({rec.get('steps', 0) / max(1, per_epoch):.0%} of an epoch) in its time budget"
                )
            load = r.get("machine") or {}
            if load.get("load_avg_start") is not None:
                notes.append(f"load average {load['load_avg_start']:.1f} -> {load['load_avg_end']:.1f}")
            lines.append(f"- {name}: " + "; ".join(notes) + ".")
        lines += ["", "Commands:", "", "```bash", *[r["command"] for r in reports.values()], "```", ""]
    else:
        lines += ["Not measured yet: run `python benchmarks/quantize_hybrid.py`.", ""]
    abl_file = work / "ablation.json"
    if abl_file.is_file():
        abl = json.loads(abl_file.read_text())
        lines += [
            "### Decided by measurement",
            "",
            f"PTQ w8a8 (MSE ranges, bias correction) on {abl['calib_images']} compression-split images; "
            f"cosine to fp32 on {abl['test_images']} test-fold images (`python benchmarks/quantize_hybrid.py "
            "--stage ablation`).",
            "",
            "| variant | what changes | int8 layers | quantizers | cos mean | cos min |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for r in abl["results"]:
            cells = [r["name"], r["what"], r["int_layers"], r["quantizers"]]
            cells += [f"{r['cos_mean']:.4f}", f"{r['cos_min']:.4f}"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        lines.append("")
    lines += [END, ""]
    return lines


def write_doc(doc: Path, lines: list[str]) -> None:
    text = doc.read_text() if doc.is_file() else ""
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END) + 1
        text = text[:a] + block + text[b:]
    elif "\n## Pruning" in text:
        a = text.index("\n## Pruning") + 1
        text = text[:a] + block + "\n" + text[a:]
    else:
        text = text + "\n" + block
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, doc)
    print(f"wrote {doc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeface_quant_hybrid"))
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "compression.md")
    ap.add_argument("--stage", choices=["all", "quantize", "evaluate", "ablation", "table"], default="all")
    ap.add_argument(
        "--rows", default="ptq_minmax,ptq_percentile,ptq_mse,ptq_w6a6,mixed_0.29,qat_kd,qat_ekd,qat_kd_w6a6"
    )
    ap.add_argument("--qat-minutes", type=float, default=20.0, help="Wall-clock budget of each QAT row.")
    ap.add_argument("--ablation-calib", type=int, default=128)
    ap.add_argument("--ablation-test", type=int, default=256)
    ap.add_argument("--force", action="store_true", help="Re-run commands whose outputs exist.")
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
    if args.stage in ("all", "evaluate"):
        evaluate(names, args.work)
    if args.stage == "ablation":
        ablation(args.work, args.ablation_calib, args.ablation_test)
    if args.stage in ("all", "table", "ablation"):
        write_doc(args.doc, section(args.work, list(table)))


if __name__ == "__main__":
    main()
