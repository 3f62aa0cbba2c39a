"""Pruning recipe benchmark (issue 14): which distillation loss recovers a pruned MobileFaceNet best at
the low-FAR operating point, and what prune + int8 QAT + export gives on ONNX Runtime.

Every step is an `edgeface` CLI command (printed, and written beside its numbers in the docs) whose output
is cached in --work: a step whose result file exists is skipped, so an interrupted run continues where it
stopped (an interrupted fine-tune also continues inside `edgeface prune`, from OUT.pt.resume/). Rows:

1. fp32: mobilefacenet_ms1m exported as fp32 ONNX and measured with `edgeface eval` (ONNX Runtime) on LFW
   folds 6-10 with flip and per-group rates; every fp32 row is measured the same way.
2. One row per recovery loss, all on the same structure and budget: global L2 pruning to <= 65 % of the
   MACs (`--target-macs 0.65` bisects the ratio once, in a one-shot cut without fine-tune; every recipe
   then passes that ratio, which gives the same structure), then the same fine-tune (same images of the
   compression split, same augmentation and seed, same step and wall-clock caps), all recipes side by
   side so that they share the machine's load alike. Per-group FNMR/FMR changes against fp32 with the
   flag rule of `edgeface.eval.groups`.
3. Chain: the recipe with the best TAR@FAR=1e-3 (of --work, or of another budget's folder given by
   --chain-from) -> `edgeface quantize --method qat` (int8, short) -> `edgeface export --int8 --format
   onnx`, evaluated as an artifact; beside it `edgeface export --int8` of the same pruned fp32 checkpoint
   (the exporter's PTQ: what QAT adds) and of the unpruned model. ORT latency: batch 1, one thread, the
   artifacts interleaved round by round.

Rows whose cached results are gone (a removed --work folder) are kept from the current docs as they were
written and marked "(earlier run)"; their JSON rows (with commands) are kept too.

MACs are Torch-Pruning's count (`tp.utils.count_ops_and_params`), the one `--target-macs` bisects on; the
table also gives the conv+linear count of `edgeface.compress.quant.count_macs` (the compression report's),
which leaves out the element-wise work of the BatchNorm/PReLU modules that Torch-Pruning counts, so it
is a little lower.

    python benchmarks/prune_recipes.py                     # everything (resumes)
    python benchmarks/prune_recipes.py --docs-only         # rewrite the docs from the cached results
    # a longer budget in its own folder (copy ratio.json there to skip the search), then into the docs:
    python benchmarks/prune_recipes.py --work artifacts/prune_recipes_cos45 --recipes cosine --minutes 45 \
        --threads 2 --no-chain --md artifacts/prune_recipes_cos45/prune_recipes.md
    python benchmarks/prune_recipes.py --docs-only --also artifacts/prune_recipes_cos45
    # the chain from that folder's model (--work then only provides fp32 and the unpruned int8 artifact):
    python benchmarks/prune_recipes.py --recipes none --also artifacts/prune_recipes_cos45 \
        --chain-from artifacts/prune_recipes_cos45 --qat-minutes 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mobilefacenet"
WEIGHTS = "../shared/models/mobilefacenet_ms1m.pt"
LFW = "../shared/data/lfw"
GROUPS = "../shared/data/lfw/gender.csv"
TARGET_MACS = "0.65"
RECIPES = {  # name -> --loss
    "cosine": "cosine",
    "ekd": "ekd",
    "relation": "relation",
    "cosine+ekd": "cosine+ekd",
    "cosine+relation": "cosine+relation",
}
TAR_KEY = "1e-03"
TABLE_HEADER = [
    "| recipe (`--loss`) | MACs (conv+linear) | ratio | params | steps x batch (fine-tune / run min) "
    "| last val cos @step | ONNX parity | LFW acc. | change | TAR@1e-3 | change | TAR@1e-2 "
    "| per-group change vs fp32 (flag rule) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
]  # edgeface.eval.lfw_eval.far_key(1e-3)


def run(cmd: list[str], stdout: Path | None = None) -> None:
    """Run one CLI step from the repository root; its stdout goes to `stdout` atomically."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    if stdout is None:
        subprocess.run(cmd, cwd=ROOT, check=True)
    else:
        tmp = stdout.with_name(stdout.name + ".tmp")
        with open(tmp, "w") as f:
            subprocess.run(cmd, cwd=ROOT, check=True, stdout=f)
        os.replace(tmp, stdout)
    print(f"  ({(time.perf_counter() - t0) / 60:.1f} min)", flush=True)


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def eval_cmd(model: str, weights: str | None, out: Path) -> list[str]:
    cmd = ["edgeface", "eval", "-m", model]
    if weights is not None:
        cmd += ["-w", weights]
    cmd += ["--pairs", f"{LFW}/pairs.txt", "--images", f"{LFW}/aligned112", "--folds", "6-10", "--flip"]
    return cmd + ["--groups", GROUPS, "--json", rel(out)]


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def evaluate(name: str, model: str, weights: str | None, work: Path) -> Path:
    out = work / f"{name}.eval.json"
    if not out.exists():
        run(eval_cmd(model, weights, out))
    return out


def prune_cmd(loss: str, budget: list[str], out: Path, args: argparse.Namespace) -> list[str]:
    return [
        "edgeface", "prune", "-m", MODEL, "-w", WEIGHTS, *budget, "--importance", "l2", "--global",
        "--data", LFW, "--finetune-epochs", "100", "--max-steps", str(args.steps),
        "--max-minutes", str(args.minutes), "--loss", loss, "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--augment", args.augment, "--seed", "0",
        "--val-every", "25", "-o", rel(out), "--json",
        *(["--steps", str(args.increments)] if args.increments > 1 else []),
        *(["--schedule", args.schedule] if args.schedule != "cosine" else []),
    ]  # fmt: skip


def export_fp32_cmd(name: str, work: Path, fmt: str = "onnx") -> list[str]:
    weights = WEIGHTS if name == "fp32" else rel(work / f"{name}.pt")
    out = work / (f"{name}_fp32" if fmt == "onnx" else f"{name}_fp32_{fmt}")
    return [
        "edgeface", "export", "-m", MODEL, "-w", weights, "--fp32", "--format", fmt,
        "--calib", LFW, "--no-pack", "-o", rel(out), "--json",
    ]  # fmt: skip


def tflite_fp32(name: str, work: Path) -> Path:
    art = work / f"{name}_fp32_tflite" / f"{MODEL}_fp32.tflite"
    if not art.exists():
        run(export_fp32_cmd(name, work, "tflite"), stdout=work / f"{name}.export_tflite.json")
    return art


def onnx_fp32(name: str, work: Path) -> Path:
    art = work / f"{name}_fp32" / f"{MODEL}_fp32.onnx"
    if not art.exists():
        run(export_fp32_cmd(name, work), stdout=work / f"{name}.export.json")
    return art


def evaluate_onnx(name: str, work: Path) -> Path:
    """Every fp32 row (reference and recipes) is measured the same way: its fp32 ONNX export in ORT."""
    return evaluate(name, rel(onnx_fp32(name, work)), None, work)


def metrics(ev: dict[str, Any]) -> dict[str, Any]:
    return {"acc": ev["acc"], "tar_1e3": ev["tar_at_far"][TAR_KEY], "tar_1e2": ev["tar_at_far"]["1e-02"]}


def group_change(ref: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    from edgeface.eval.groups import compare_groups

    return compare_groups(ref["groups"], ev["groups"])


def count_conv_macs(weights: Path | str) -> int:
    from edgeface.compress.quant import count_macs
    from edgeface.models.loading import load_model

    loaded = load_model(MODEL, str(ROOT / weights) if isinstance(weights, str) else str(weights), None)
    h, w = loaded.spec.input_size
    return count_macs(loaded.model, (3, h, w))


def search_ratio(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The pruning ratio `--target-macs` finds (one-shot cut, no fine-tune): every recipe then uses it."""
    ratio_file = work / "ratio.json"
    out = work / "search.pt"
    cmd = [
        "edgeface", "prune", "-m", MODEL, "-w", WEIGHTS, "--target-macs", TARGET_MACS, "--importance", "l2",
        "--global", "-o", rel(out), "--json",
    ]  # fmt: skip
    if not ratio_file.exists():
        run(cmd, stdout=work / "search.json")
        data = load(work / "search.json")
        b = data["budget"]
        found = {"ratio": b["ratio"], "budget": b, "prune": data["prune"], "command": cmd}
        ratio_file.write_text(json.dumps(found, indent=1))
    return load(ratio_file)


def run_recipes(args: argparse.Namespace, work: Path) -> dict[str, dict[str, Any]]:
    """Fine-tune every recipe at once (same wall-clock budget under the same load), then evaluate each."""
    if not args.recipes:
        return {}
    found = search_ratio(args, work)
    budget = ["--ratio", str(found["ratio"])]
    cmds = {n: prune_cmd(RECIPES[n], budget, work / f"{n}.pt", args) for n in args.recipes}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = {}
    for name, cmd in cmds.items():
        summary = work / f"{name}.prune.json"
        if summary.exists():
            continue
        print("$", f"OMP_NUM_THREADS={args.threads}", shlex.join(cmd), flush=True)
        raw = summary.with_suffix(".raw")
        log = open(work / f"{name}.prune.log", "a")  # noqa: SIM115 - closed after wait
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(raw, "w"), stderr=log), raw, log)
    for name, (proc, raw, log) in procs.items():
        if proc.wait() != 0:
            log_file = rel(work / f"{name}.prune.log")
            sys.exit(f"error: recipe {name} failed (see {log_file}); rerun to resume")
        log.close()
        data = json.loads(raw.read_text())
        data["command"] = cmds[name]
        data["threads"] = args.threads
        (work / f"{name}.prune.json").write_text(json.dumps(data, indent=1))
        raw.unlink()
    # evaluated as exported fp32 ONNX in ONNX Runtime: ~5x faster than torch eager here, and the export's
    # parity check (cosine to the PyTorch model, kept in NAME.export.json) shows it is the same model
    evals = {}
    for name in args.recipes:
        if (work / f"{name}.eval.json").exists():
            continue
        art = onnx_fp32(name, work)
        cmd = eval_cmd(rel(art), None, work / f"{name}.eval.json") + ["--threads", "1"]
        print("$", shlex.join(cmd), flush=True)
        evals[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name, proc in evals.items():
        if proc.wait() != 0:
            sys.exit(f"error: evaluating {name} failed; rerun to resume")
    rows = {}
    for n in args.recipes:
        rows[n] = {"prune": load(work / f"{n}.prune.json"), "eval": load(work / f"{n}.eval.json")}
        rows[n]["command"] = cmds[n]
    return rows


def best_recipe(rows: dict[str, dict[str, Any]]) -> str:
    """By TAR@FAR=1e-3 (the operating point users feel), accuracy only to break a tie."""
    return max(rows, key=lambda n: (metrics(rows[n]["eval"])["tar_1e3"], metrics(rows[n]["eval"])["acc"]))


def latency(paths: dict[str, Path], rounds: int, runs: int) -> dict[str, Any]:
    """ORT or LiteRT (by extension), batch 1, one thread, the artifacts' own input; interleaved so load
    hits all alike."""
    import numpy as np
    from bench_timing import interleaved_ms
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.preprocess import read_image

    crop = read_image(str(ROOT / LFW / "aligned112" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"))
    calls = {}
    for k, p in paths.items():
        a = load_artifact(p, num_threads=1)
        x = a.native_input([crop])
        calls[k] = lambda a=a, x=x: a.invoke(x)
    times = interleaved_ms(calls, rounds, runs)

    def speedup(slow: str, fast: str) -> dict[str, Any]:
        ratio = [b / t for t, b in zip(times[fast], times[slow], strict=True)]  # > 1: `fast` is faster
        return {"median": float(np.median(ratio)), "faster_rounds": int(sum(r > 1 for r in ratio))}

    return {
        "median_ms": {k: float(np.median(v)) for k, v in times.items()},
        "rounds": times,
        "speedup": {
            "chain_vs_int8_unpruned": speedup("int8_unpruned", "chain"),
            **(
                {"ptq_vs_int8_unpruned": speedup("int8_unpruned", "ptq_pruned")}
                if "ptq_pruned" in times
                else {}
            ),
            "fp32_pruned_vs_fp32_unpruned": speedup("fp32_unpruned", "fp32_pruned"),
        },
        "n_rounds": rounds,
        "runs_per_round": runs,
    }


def qat_cmd(best: str, args: argparse.Namespace, work: Path) -> list[str]:
    cmd = [
        "edgeface", "quantize", "-m", MODEL, "-w", rel(work / f"{best}.pt"), "--method", "qat",
        "--bits", "w8a8", "--calib", LFW, "--num-images", "512", "--epochs", "1",
        "--max-minutes", str(args.qat_minutes),
    ]  # fmt: skip
    if args.qat_steps is not None:
        cmd += ["--max-steps", str(args.qat_steps)]
    if args.qat_lr is not None:
        cmd += ["--lr", str(args.qat_lr)]
    return cmd + ["-o", rel(work / f"chain_{best}.qat.pt"), "--json"]


def int8_export_cmd(
    weights: str, out_dir: Path, min_cosine: str | None = None, fmt: str = "onnx"
) -> list[str]:
    cmd = ["edgeface", "export", "-m", MODEL, "-w", weights, "--int8", "--format", fmt, "--calib", LFW]
    cmd += ["--no-pack"] + (["--min-cosine", min_cosine] if min_cosine else [])
    return cmd + ["-o", rel(out_dir), "--json"]


def run_chain(best: str, args: argparse.Namespace, work: Path, base_work: Path) -> dict[str, Any]:
    """Pruned `best` of `work` -> int8 QAT -> ONNX export, and its plain PTQ export for comparison.

    The unpruned int8 artifact and both fp32 references of the latency come from `base_work` (the --work
    folder); the pruned model's files from `work` (its own budget's folder, e.g. a longer fine-tune).
    """
    qat_settings = {k: getattr(args, k) for k in ("qat_minutes", "qat_steps", "qat_lr")}
    settings = work / f"chain_{best}.settings.json"  # the QAT the cached chain files were made with
    if settings.exists() and load(settings) != qat_settings:
        sys.exit(
            f"error: {rel(work)}/chain_{best}.* were made with {load(settings)}, not {qat_settings}; "
            "pass those options or move the chain files away"
        )
    settings.write_text(json.dumps(qat_settings))
    base_dir = base_work / "int8_unpruned"
    base_art = base_dir / f"{MODEL}_int8.onnx"
    export_base = int8_export_cmd(WEIGHTS, base_dir)
    if not base_art.exists():
        run(export_base, stdout=base_work / "int8_unpruned.export.json")
    base_ev = evaluate("int8_unpruned", rel(base_art), None, base_work)

    # PTQ of the pruned fp32 checkpoint by the exporter alone: what QAT has to beat
    ptq_dir = work / f"ptq_{best}"
    ptq_art = ptq_dir / f"{MODEL}_int8.onnx"
    export_ptq = int8_export_cmd(rel(work / f"{best}.pt"), ptq_dir)
    if not ptq_art.exists():
        run(export_ptq, stdout=work / f"ptq_{best}.export.json")
    ptq_ev = evaluate(f"ptq_{best}", rel(ptq_art), None, work)

    qat = work / f"chain_{best}.qat.pt"
    quant = qat_cmd(best, args, work)
    if not qat.exists():
        run(quant, stdout=work / f"chain_{best}.qat.json")
    art_dir = work / f"chain_{best}"
    art = art_dir / f"{MODEL}_int8.onnx"
    export = int8_export_cmd(rel(qat), art_dir, "0.95")
    if not art.exists():
        run(export, stdout=work / f"chain_{best}.export.json")
    chain_ev = evaluate(f"chain_{best}", rel(art), None, work)

    lat_file = work / f"chain_{best}.latency.json"
    arts = {
        "int8_unpruned": base_art,
        "chain": art,
        "ptq_pruned": ptq_art,
        "fp32_unpruned": onnx_fp32("fp32", base_work),
        "fp32_pruned": onnx_fp32(best, work),
    }
    if not lat_file.exists():
        print(f"latency: {args.rounds} interleaved rounds x {args.runs} calls of {list(arts)}", flush=True)
        lat = latency(arts, args.rounds, args.runs)
        lat_file.write_text(json.dumps(lat, indent=1))

    # the same three int8 models and both fp32 ones as TFLite, timed in LiteRT
    tfl_cmds, tfl = {}, {}
    for key, weights, out_dir, min_cos in (
        ("int8_unpruned", WEIGHTS, base_work / "int8_unpruned_tflite", None),
        ("ptq_pruned", rel(work / f"{best}.pt"), work / f"ptq_{best}_tflite", None),
        ("chain", rel(qat), work / f"chain_{best}_tflite", "0.95"),
    ):
        tfl_cmds[key] = int8_export_cmd(weights, out_dir, min_cos, "tflite")
        tfl[key] = out_dir / f"{MODEL}_int8.tflite"
        if not tfl[key].exists():
            run(tfl_cmds[key], stdout=out_dir.with_suffix(".export.json"))
    tfl["fp32_unpruned"], tfl["fp32_pruned"] = tflite_fp32("fp32", base_work), tflite_fp32(best, work)
    litert_file = work / f"chain_{best}.litert_latency.json"
    if not litert_file.exists():
        print(f"LiteRT latency: {args.rounds} interleaved rounds x {args.runs} calls", flush=True)
        litert_file.write_text(json.dumps(latency(tfl, args.rounds, args.runs), indent=1))
    return {
        "best": best,
        "work": work,
        "tag": budget_tag(work, base_work, best),
        "prune": load(work / f"{best}.prune.json"),
        "qat_settings": qat_settings,
        "commands": {
            "export_unpruned": export_base,
            "export_ptq": export_ptq,
            "quantize": quant,
            "export": export,
        },
        "eval_cmds": {
            "int8_unpruned": eval_cmd(rel(base_art), None, base_ev),
            "ptq": eval_cmd(rel(ptq_art), None, ptq_ev),
            "chain": eval_cmd(rel(art), None, chain_ev),
        },
        "base_eval": load(base_ev),
        "ptq_eval": load(ptq_ev),
        "chain_eval": load(chain_ev),
        "qat": load(work / f"chain_{best}.qat.json"),
        "latency": load(lat_file),
        "litert": load(litert_file),
        "litert_commands": tfl_cmds,
        "litert_size": {k: v.stat().st_size for k, v in tfl.items()},
        "size": {
            "int8_unpruned": base_art.stat().st_size,
            "ptq": ptq_art.stat().st_size,
            "chain": art.stat().st_size,
        },
        "export_json": {
            "int8_unpruned": base_work / "int8_unpruned.export.json",
            "ptq": work / f"ptq_{best}.export.json",
            "chain": work / f"chain_{best}.export.json",
        },
    }


def finetune_summary(pr: dict[str, Any]) -> dict[str, Any]:
    """The fine-tune record of a prune run; an iterative run (several increments) sums its steps and
    training time and keeps the last increment's validation."""
    ft = pr.get("finetune") or {}
    if isinstance(ft, dict):
        return ft
    if not ft:
        return {}
    return {
        "steps": sum(int(f.get("steps", 0)) for f in ft),
        "train_s": sum(float(f.get("train_s", 0)) for f in ft),
        "val": ft[-1].get("val") or [],
    }


def budget_tag(d: Path, base_work: Path, name: str) -> str:
    """How a row of another budget's folder is labelled: by the cap its fine-tune ran into."""
    if d.resolve() == base_work.resolve():
        return ""
    budget = load(d / "settings.json")
    fts = finetune_summary(load(d / f"{name}.prune.json"))
    extra = "".join(
        f" {label}" for key, default, label in (
            ("augment", "basic", f"{budget.get('augment')} aug."),
            ("increments", 1, f"{budget.get('increments')} increments"),
            ("schedule", "cosine", f"{budget.get('schedule')} lr"),
        ) if budget.get(key, default) != default
    )  # fmt: skip
    inc = int(budget.get("increments", 1))  # the step cap splits evenly over the increments
    if fts.get("steps") == max(1, budget["steps"] // inc) * inc:  # the step cap, not the machine's speed
        return f" {budget['steps']}steps{extra}"
    return f" {budget['minutes']:g}min{extra}"


def cached_rows(d: Path) -> dict[str, dict[str, Any]]:
    """The recipes of a --work folder that have been fine-tuned and evaluated."""
    rows = {}
    for name in RECIPES:
        if (d / f"{name}.eval.json").exists() and (d / f"{name}.prune.json").exists():
            pr = load(d / f"{name}.prune.json")
            rows[name] = {"prune": pr, "eval": load(d / f"{name}.eval.json"), "command": pr["command"]}
    return rows


# ---------------------------------------------------------------------------------------------- docs


def pp(x: float) -> str:
    return f"{x * 100:+.2f} pp"


def pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def cmdline(cmd: list[str]) -> str:
    return shlex.join(cmd)


def groups_cell(gc: dict[str, Any]) -> str:
    parts = []
    for g, row in gc["groups"].items():
        f = row["fnmr"]["change"]
        m = row["fmr"]["change"]
        flag = "".join(
            f" **{k} flagged**" for k in ("fnmr", "fmr") if row[k]["flagged"]
        )  # the flag rule of compare_groups
        fs, ms = pp(f) if f is not None else "n/a", pp(m) if m is not None else "n/a"
        parts.append(f"{g}: FNMR {fs}, FMR {ms}{flag}")
    return "; ".join(parts) if parts else "n/a"


EARLIER = "(earlier run)"
EARLIER_NOTE = (
    f"Rows marked {EARLIER} come from an earlier run of this script whose cached results are gone; they are "
    "kept as they were written (their commands are in docs/prune_recipes.json), not regenerated."
)
SAME_BUDGET = "## Recovery losses on one budget"
OTHER_BUDGETS = "### Other budgets"
CHAIN = "## Chain: prune + int8 QAT + ONNX export"
TAIL = "Longer budgets (the issue allows"  # the paragraph after the last section


def earlier_docs(md: Path) -> dict[str, Any]:
    """The docs as they are now: rows this run cannot regenerate (their cache is gone) are kept from them."""
    lines = md.read_text().splitlines() if md.exists() else []
    js = md.with_suffix(".json")
    return {"lines": lines, "items": load(js) if js.exists() else []}


def section(lines: list[str], header: str) -> list[str]:
    """`header` and the lines after it up to the next header (outside code blocks) or the closing text."""
    if header not in lines:
        return []
    i = lines.index(header)
    fenced = False
    for j in range(i + 1, len(lines)):
        fenced ^= lines[j].startswith("```")
        if not fenced and (lines[j].startswith(TAIL) or lines[j].startswith("#")):
            return lines[i:j]
    return lines[i:]


def table_rows(block: list[str]) -> dict[str, str]:
    """Label (first cell, without the earlier-run mark) -> the table line, for the data rows of `block`."""
    rows = {}
    for line in block:
        if line.startswith("| ") and not line.startswith("| recipe") and not line.startswith("| artifact"):
            label = line.split("|")[1].strip().replace(EARLIER, "").strip()
            rows[label] = line
    return rows


def carried_rows(block: list[str], fresh: set[str]) -> list[str]:
    """Table lines of an earlier run whose label this run did not produce, marked as such once."""
    out = []
    for label, line in table_rows(block).items():
        if label in fresh:
            continue
        if EARLIER not in line:
            cells = line.split("|")
            cells[1] = f" {label} {EARLIER} "
            line = "|".join(cells)
        out.append(line)
    return out


def recipe_row(
    name: str, r: dict[str, Any], work: Path, fp32: dict[str, Any], base_conv: int, batch: int, tag: str = ""
) -> tuple[str, dict[str, Any]]:
    """One table line and one JSON row of a fine-tuned recipe."""
    ref = metrics(fp32)
    pr, ev = r["prune"], r["eval"]
    m = metrics(ev)
    p = pr["prune"]
    conv = count_conv_macs(work / f"{name}.pt")
    fts = finetune_summary(pr)
    steps = fts.get("steps", "?")
    val = fts.get("val") or []
    last_val = f"{val[-1]['cos']:.4f} @{val[-1]['step']}" if val and isinstance(val[-1], dict) else "?"
    mins = f"{fts.get('train_s', 0) / 60:.1f} / {pr['wall_s'] / 60:.1f}"
    mr = p["macs_after"] / p["macs_before"]
    line = (
        f"| {name}{tag} | {p['macs_after'] / 1e6:.1f} M ({conv / 1e6:.1f} M) | {mr * 100:.1f} % "
        f"({conv / base_conv * 100:.1f} %) "
        f"| {p['params_after'] / 1e3:,.0f} k | {steps} x {batch} ({mins}) | {last_val} "
        f"| {parity(work / f'{name}.export.json')} "
        f"| {pct(m['acc'])} | {pp(m['acc'] - ref['acc'])} | {pct(m['tar_1e3'])} "
        f"| {pp(m['tar_1e3'] - ref['tar_1e3'])} | {pct(m['tar_1e2'])} "
        f"| {groups_cell(group_change(fp32, ev))} |"
    )
    return line, json_row(f"prune_{name}{tag.replace(' ', '_')}", mr, ref, m, False, cmdline(r["command"]))


def also_rows(
    dirs: list[Path], fp32: dict[str, Any], base_conv: int, work: Path, old: dict[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of other budgets (their own --work folders, run alone rather than side by side)."""
    lines: list[str] = []
    items: list[dict[str, Any]] = []
    cmds: list[str] = []
    for d in dirs:
        budget = load(d / "settings.json")
        for name, r in cached_rows(d).items():
            tag = budget_tag(d, work, name)
            line, item = recipe_row(name, r, d, fp32, base_conv, budget["batch_size"], tag)
            lines.append(line)
            items.append(item)
            threads = r["prune"].get("threads")
            env = f"OMP_NUM_THREADS={threads} " if threads else ""
            cmds.append(env + cmdline(r["command"]))
    fresh = {line.split("|")[1].strip() for line in lines}
    carried = carried_rows(section(old["lines"], OTHER_BUDGETS), fresh)
    by_name = {i["name"]: i for i in old["items"]}
    for line in carried:
        label = line.split("|")[1].replace(EARLIER, "").strip()
        item = by_name.get(f"prune_{label.replace(' ', '_')}")
        if item is not None:
            cmds.append(f"# {label} {EARLIER}: " + item["command"])
    if not lines and not carried:
        return [], []
    out = [
        OTHER_BUDGETS,
        "",
        "The same structure and settings with a longer fine-tune, run by itself (not side by side with the "
        "other recipes, so not comparable with them step for step); cached in its own `--work` folder and "
        "added here with `--also DIR`. A row named `N steps` ran a fixed step count (`--steps N`, with a "
        "wall-clock cap it did not reach), so it does not depend on the machine's load; `N min` ran until "
        "its wall-clock cap.",
        "",
        *TABLE_HEADER,
        *lines,
        *carried,
        "",
        "```bash",
        *cmds,
        "```",
        "",
    ]
    if carried:
        out += [EARLIER_NOTE, ""]
    return out, items


def kept_items(old: dict[str, Any], items: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """JSON rows of the earlier docs that this run did not regenerate and whose table line is kept."""
    names = {i["name"] for i in items}
    return [i for i in old["items"] if i["name"] not in names and i["name"] in labels]


def write_docs(fp32: dict[str, Any], fp32_work: Path, rows: dict[str, dict[str, Any]],
               chain: dict[str, Any] | None, args: argparse.Namespace, work: Path,
               old: dict[str, Any]) -> None:  # fmt: skip
    """Write the tables; `old` is the docs as they were before this run (`earlier_docs`)."""
    ref = metrics(fp32)
    base_conv = count_conv_macs(WEIGHTS)
    items: list[dict[str, Any]] = []
    kept: list[str] = []  # JSON names of rows kept from the earlier docs
    lines = [
        "# Pruning recipes: which recovery keeps the low-FAR operating point (issue 14)",
        "",
        "Generated by `python benchmarks/prune_recipes.py` (cached steps in "
        f"`{rel(work)}/`; rerunning resumes). Model mobilefacenet_ms1m, LFW folds 6-10 with flip, per-group "
        "rates by `--groups ../shared/data/lfw/gender.csv` (each model at its own best-accuracy threshold, "
        "as `edgeface eval` reports). Fine-tuning uses only the compression split of LFW (identities not in "
        "folds 6-10; the CLI selects it from the LFW root). The default is picked by TAR@FAR=1e-3, not "
        "accuracy.",
        "",
        "Every fp32 model (the reference and each pruned recipe) is measured as its fp32 ONNX export in "
        "ONNX Runtime (`edgeface eval -m <artifact>`, ~5x faster than torch eager on this machine); the "
        "export's parity check (mean / min cosine to the PyTorch model on 128 held-out faces) is in the "
        f"table. fp32 reference (parity {parity(fp32_work / 'fp32.export.json')}):",
        "",
        "```bash",
        cmdline(export_fp32_cmd("fp32", fp32_work)),
        cmdline(
            eval_cmd(rel(fp32_work / "fp32_fp32" / f"{MODEL}_fp32.onnx"), None, fp32_work / "fp32.eval.json")
        ),
        "```",
        "",
        f"LFW accuracy {pct(ref['acc'])} (± {fp32['acc_std'] * 100:.2f}), "
        f"TAR@FAR=1e-3 {pct(ref['tar_1e3'])}, "
        f"TAR@FAR=1e-2 {pct(ref['tar_1e2'])}.",
        "",
    ]
    if rows:
        first = next(iter(rows.values()))["prune"]
        p = first["prune"]
        base_macs = p["macs_before"]
        ratio = load(work / "ratio.json")
        lines += [
            SAME_BUDGET,
            "",
            "Structure: global L2 filter pruning (`--importance l2 --global`, defaults `--round-to 8 --scope "
            f"all`). `--target-macs {TARGET_MACS}` bisected the ratio once ({len(ratio['budget']['probes'])} "
            f"probes, one-shot cut, no fine-tune: `{cmdline(ratio['command'])}`) and found {ratio['ratio']}; "
            f"every recipe passes `--ratio {ratio['ratio']}`, the same structure (equal MAC counts below) "
            "without repeating the search. The recipes were fine-tuned concurrently, so they shared the "
            "machine's load alike, each under the same budget: the same compression-split images, "
            f"`--augment {args.augment}`, seed 0, batch {args.batch_size}, lr {args.lr} (AdamW, cosine "
            f"schedule), at most {args.steps} steps and at most {args.minutes:g} minutes of wall time, "
            f"whichever came first, {args.threads} torch thread(s) each (`OMP_NUM_THREADS`). EKD draws two "
            "views of each image per step (its genuine pairs), so it runs twice the images per step and "
            "makes fewer steps in the same time. Measured on the shared 2-core machine while other jobs ran.",
            "",
            "MACs: Torch-Pruning's count (`tp.utils.count_ops_and_params`, what `--target-macs` bisects on, "
            f"{base_macs / 1e6:.1f} M unpruned); in brackets the conv+linear count of the compression "
            f"report (`edgeface.compress.quant.count_macs`, {base_conv / 1e6:.1f} M unpruned), which leaves "
            'out the element-wise BatchNorm/PReLU work; the ratio column gives both. "last val cos": the '
            "fine-tune's own check, the mean cosine to the unpruned model's embeddings of 128 fixed "
            "compression-split faces (every 25 steps); relation KD and EKD leave the embedding space free "
            "to rotate, so it says little for them: TAR on the test folds is the measure.",
            "",
            *TABLE_HEADER,
        ]
        for name, r in rows.items():
            line, item = recipe_row(name, r, work, fp32, base_conv, args.batch_size)
            lines.append(line)
            items.append(item)
        lines += [
            "",
            "Commands (each row, run concurrently; then the fp32 ONNX export and `edgeface eval` of the "
            "artifact, as for fp32 with `-m <artifact> --threads 1`, shown for the first row):",
            "",
            "```bash",
        ]
        lines += [f"OMP_NUM_THREADS={args.threads} " + cmdline(r["command"]) for r in rows.values()]
        first_name = next(iter(rows))
        art = work / f"{first_name}_fp32" / f"{MODEL}_fp32.onnx"
        lines += [cmdline(export_fp32_cmd(first_name, work))]
        lines += [cmdline(eval_cmd(rel(art), None, work / f"{first_name}.eval.json") + ["--threads", "1"])]
        lines += ["```", ""]
        best = best_recipe(rows)
        bm = metrics(rows[best]["eval"])
        macs_ok = all(
            r["prune"]["prune"]["macs_after"] <= float(TARGET_MACS) * r["prune"]["prune"]["macs_before"]
            for r in rows.values()
        )
        acc_ok = ref["acc"] - bm["acc"] <= 0.003
        tar_ok = ref["tar_1e3"] - bm["tar_1e3"] <= 0.010
        lines += [
            f"Best by TAR@FAR=1e-3: **{best}**. Acceptance (pruned <= 65 % MACs, LFW within 0.3 pp, TAR@1e-3 "
            f"within 1.0 pp of fp32): MACs {'met' if macs_ok else 'NOT met'}; accuracy "
            f"{pp(bm['acc'] - ref['acc'])} ({'met' if acc_ok else 'NOT met'}); TAR@1e-3 "
            f"{pp(bm['tar_1e3'] - ref['tar_1e3'])} ({'met' if tar_ok else 'NOT met'}).",
            "",
        ]
    else:  # this --work holds no fine-tuned rows: keep the earlier table as it was written
        block = section(old["lines"], SAME_BUDGET)
        if block:
            best_line = next((x for x in old["lines"] if x.startswith("Best by TAR@FAR=1e-3: **")), None)
            note = (
                f"{EARLIER}: the cached results of this table (`{rel(work)}/`) are gone, so it is kept as "
                "an earlier run of this script wrote it (same commands), not regenerated."
            )
            body = [x for x in block if x != note]
            while body and not body[-1].strip():
                body.pop()
            rest = body[1:]
            while rest and not rest[0].strip():
                rest.pop(0)
            lines += [body[0], "", note, "", *rest, ""]
            if best_line and best_line not in body:
                lines += [best_line, ""]
            kept += [f"prune_{label}" for label in table_rows(block)]
    extra, extra_items = also_rows(args.also, fp32, base_conv, work, old)
    lines += extra
    items += extra_items
    kept += [f"prune_{label.replace(' ', '_')}" for label in table_rows(section(old["lines"], OTHER_BUDGETS))]
    others = extra_items + [i for i in kept_items(old, items, kept) if not i["int8"]]
    over = [i["name"] for i in others if i["macs_ratio"] > float(TARGET_MACS)]
    if over:
        lines += [
            f"Over the {float(TARGET_MACS):.0%} MACs budget, so not candidates: {', '.join(over)}. "
            "An iterative run (`--increments N`: `edgeface prune --steps N`) removes the same share of "
            "channels in N equal increments, ranked globally again after each fine-tune: it cut channels "
            "in cheaper layers and kept more MACs than the one-shot cut.",
            "",
        ]
        others = [i for i in others if i["name"] not in over]
    if others:
        eb = min(others, key=lambda r: r["tar_1e3_drop_pp"])
        a_ok, t_ok = eb["acc_drop_pp"] <= 0.3, eb["tar_1e3_drop_pp"] <= 1.0
        lines += [
            f"Best of the other budgets by TAR@FAR=1e-3: `{eb['name']}`: accuracy "
            f"{pp(-eb['acc_drop_pp'] / 100)} ({'met' if a_ok else 'NOT met'}), TAR@1e-3 "
            f"{pp(-eb['tar_1e3_drop_pp'] / 100)} ({'met' if t_ok else 'NOT met'}).",
            "",
        ]
    if chain is not None:
        lines += chain_section(chain, fp32, old, args, items, kept)
    elif section(old["lines"], CHAIN):  # no chain in this run: the earlier one stays as written
        lines += section(old["lines"], CHAIN)
        kept += [i["name"] for i in old["items"] if i["int8"]]
    lines += [
        "Longer budgets (the issue allows 90 minutes per recipe): `python benchmarks/prune_recipes.py --work "
        "artifacts/prune_recipes_90 --minutes 90 --md artifacts/prune_recipes_90/prune_recipes.md` (a work "
        "folder holds rows of one budget only and refuses others; copy `ratio.json` into it to skip the "
        "search). An interrupted run continues where it stopped when the same command is run again.",
        "",
    ]
    missing = [n for n in RECIPES if n not in rows and f"prune_{n}" not in kept]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)} (`--recipes` to add them; cached rows are kept).", ""]
    lines += [f"Flag rule: {group_rule()}.", ""]
    items += kept_items(old, items, kept)
    md, js = args.md, args.md.with_suffix(".json")
    for path, text in ((md, "\n".join(lines)), (js, json.dumps(items, indent=1) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"wrote {rel(md)} and {rel(js)}")


def chain_section(
    chain: dict[str, Any],
    fp32: dict[str, Any],
    old: dict[str, Any],
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    kept: list[str],
) -> list[str]:
    """The chain's table (unpruned int8, pruned PTQ int8, pruned QAT int8), latency and acceptance."""
    ref = metrics(fp32)
    be, pe, ce = metrics(chain["base_eval"]), metrics(chain["ptq_eval"]), metrics(chain["chain_eval"])
    lat = chain["latency"]
    sp, sf = lat["speedup"]["chain_vs_int8_unpruned"], lat["speedup"]["fp32_pruned_vs_fp32_unpruned"]
    bms, cms = lat["median_ms"]["int8_unpruned"], lat["median_ms"]["chain"]
    best, tag = chain["best"], chain["tag"]
    bp = chain["prune"]["prune"]
    mr = bp["macs_after"] / bp["macs_before"]
    rec = chain["qat"]["record"]
    qs = chain["qat_settings"]
    cap = f"{qs['qat_minutes']:g} min" + (f" / {qs['qat_steps']} steps" if qs["qat_steps"] else "")
    tar_ok = ref["tar_1e3"] - ce["tar_1e3"] <= 0.015
    fast_ok = cms < bms
    source = f"`{best}{tag}`" + (f" (`{rel(chain['work'])}/{best}.pt`)" if tag else "")
    labels = {
        "int8_unpruned": "int8, unpruned (PTQ export)",
        "ptq": f"pruned ({best}{tag}) + PTQ int8 (export)",
        "chain": f"pruned ({best}{tag}) + QAT int8",
    }
    out = [
        CHAIN,
        "",
        f"The {source} pruned model, then int8 QAT (`edgeface quantize --method qat`, cap {cap}, lr "
        f"{rec.get('lr')}: {rec.get('steps', '?')} steps x {rec.get('batch_size')} in "
        f"{rec.get('wall_s', 0) / 60:.1f} min) and `edgeface export --int8 --format onnx`; beside it the "
        "same pruned fp32 checkpoint exported by `edgeface export --int8` alone (the exporter's calibrated "
        "PTQ), which shows what QAT adds, and the unpruned model's `edgeface export --int8` (same "
        "exporter). All artifacts evaluated through `edgeface.runtime` (ORT) like fp32. Latency: ORT, "
        f"batch 1, one thread, the artifact's own input, {lat['n_rounds']} interleaved rounds of "
        f"{lat['runs_per_round']} calls (median of per-round means; speed-up = median of per-round "
        "ratios), on the shared machine under load.",
        "",
        "| artifact | size | export parity | LFW acc. | vs fp32 | TAR@1e-3 | vs fp32 "
        "| TAR@1e-2 | ORT ms (1 thread) | per-group change vs fp32 (flag rule) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    evs = {"int8_unpruned": chain["base_eval"], "ptq": chain["ptq_eval"], "chain": chain["chain_eval"]}
    ms = {"int8_unpruned": bms, "ptq": lat["median_ms"].get("ptq_pruned"), "chain": cms}
    for key, ev in evs.items():
        m = metrics(ev)
        t = f"{ms[key]:.2f}" if ms[key] is not None else "?"
        out.append(
            f"| {labels[key]} | {chain['size'][key] / 1e6:.2f} MB | {parity(chain['export_json'][key])} "
            f"| {pct(m['acc'])} | {pp(m['acc'] - ref['acc'])} | {pct(m['tar_1e3'])} "
            f"| {pp(m['tar_1e3'] - ref['tar_1e3'])} | {pct(m['tar_1e2'])} | {t} "
            f"| {groups_cell(group_change(fp32, ev))} |"
        )
    carried = carried_rows(section(old["lines"], CHAIN), set(labels.values()))
    out += carried
    sq = lat["speedup"].get("ptq_vs_int8_unpruned")
    out += [
        "",
        f"Speed-up of the QAT chain artifact over the unpruned int8 artifact: {sp['median']:.2f}x "
        f"(faster in {sp['faster_rounds']}/{lat['n_rounds']} rounds)"
        + (
            f"; of the pruned PTQ artifact over the unpruned int8 artifact: {sq['median']:.2f}x (faster in "
            f"{sq['faster_rounds']}/{lat['n_rounds']} rounds)"
            if sq
            else ""
        )
        + ". The same pruned model as fp32 ONNX: "
        f"{lat['median_ms']['fp32_pruned']:.2f} ms against {lat['median_ms']['fp32_unpruned']:.2f} ms "
        f"unpruned ({sf['median']:.2f}x, faster in {sf['faster_rounds']}/{lat['n_rounds']} rounds). "
        f"**Chain acceptance** (TAR@1e-3 within 1.5 pp of fp32, faster in ORT than unpruned int8): TAR "
        f"{pp(ce['tar_1e3'] - ref['tar_1e3'])} ({'met' if tar_ok else 'NOT met'}); latency {cms:.2f} vs "
        f"{bms:.2f} ms ({'met' if fast_ok else 'NOT met'}): "
        f"**{'met' if tar_ok and fast_ok else 'NOT met'}**.",
        "",
    ]
    pms = lat["median_ms"].get("ptq_pruned")
    if pms is not None:
        ptq_tar_ok = ref["tar_1e3"] - pe["tar_1e3"] <= 0.015
        out += [
            "The same two criteria for the pruned model with the exporter's PTQ instead of QAT (prune + "
            f"`edgeface export --int8`, no `edgeface quantize`): TAR {pp(pe['tar_1e3'] - ref['tar_1e3'])} "
            f"({'met' if ptq_tar_ok else 'NOT met'}); latency {pms:.2f} vs {bms:.2f} ms "
            f"({'met' if pms < bms else 'NOT met'}): **{'met' if ptq_tar_ok and pms < bms else 'NOT met'}**.",
            "",
        ]
    lite = chain.get("litert")
    if lite:
        lm, ls = lite["median_ms"], lite["speedup"]
        fp, cq, pq = (
            ls[k] for k in ("fp32_pruned_vs_fp32_unpruned", "chain_vs_int8_unpruned", "ptq_vs_int8_unpruned")
        )
        n = lite["n_rounds"]

        def row(key: str, label: str) -> str:
            size = chain["litert_size"][key] / 1e6
            return f"| {label} | {size:.2f} MB | {lm[key]:.2f} |"

        out += [
            "LiteRT (ai-edge-litert, XNNPACK, batch 1, one thread, same interleaved timing) of the same "
            "models exported with `--format tflite` (commands below). This CPU has AVX2 but no VNNI, where "
            "XNNPACK's int8 convolutions run about as fast as fp32 ([speed.md](speed.md)), so the int8 "
            "artifacts are compared with each other and the fp32 ones with each other:",
            "",
            "| TFLite artifact | size | LiteRT ms (1 thread) |",
            "|---|---:|---:|",
            row("fp32_unpruned", "fp32, unpruned"),
            row("fp32_pruned", f"fp32, pruned ({best}{tag})"),
            row("int8_unpruned", labels["int8_unpruned"]),
            row("ptq_pruned", labels["ptq"]),
            row("chain", labels["chain"]),
            "",
            f"LiteRT speed-ups: QAT chain over unpruned int8 {cq['median']:.2f}x (faster in "
            f"{cq['faster_rounds']}/{n} rounds); pruned PTQ over unpruned int8 {pq['median']:.2f}x "
            f"({pq['faster_rounds']}/{n}); pruned fp32 over unpruned fp32 {fp['median']:.2f}x "
            f"({fp['faster_rounds']}/{n}).",
            "",
        ]
    if carried:
        out += [EARLIER_NOTE + " Their latency was measured in that run's session.", ""]
    if rec.get("held_out_cos_ptq") is not None:
        fallback = ", ".join(f"`{k}`" for k in rec.get("fallback") or {}) or "nothing"
        out += [
            f"QAT's own check (`edgeface quantize` record): mean cosine to the pruned fp32 model on "
            f"{rec['held_out_images']} compression-split faces kept out of training: PTQ start "
            f"{rec['held_out_cos_ptq']:.5f}, after QAT {rec['held_out_cos_qat']:.5f}; kept: "
            f"**{rec['kept']}** (QAT hands back its PTQ start when training lowered it). QAT starts from "
            "`edgeface quantize`'s own PTQ (fake-quant, MSE-calibrated per-tensor activations, no PReLU "
            f"equalization; left float by its measured fallback: {fallback}). The exporter's PTQ of the same "
            f"pruned checkpoint keeps {parity(chain['export_json']['ptq'])} mean / min cosine to it on the "
            "export's 128 held-out faces (ONNX artifact against the PyTorch model, so not the same measure).",
            "",
        ]
    fts = finetune_summary(chain["prune"])
    budget = load(chain["work"] / "settings.json")
    if fts.get("steps", 0) < budget["steps"]:
        out += [
            f"The chain's pruned model ran into its wall-clock cap: {fts.get('steps')} of at most "
            f"{budget['steps']} fine-tune steps in {budget['minutes']:g} min on the shared machine, so its "
            "fp32 quality (its row under Other budgets) bounds what int8 can reach.",
            "",
        ]
    out += [
        "```bash",
        *(cmdline(c) for c in chain["commands"].values()),
        *(cmdline(c) for c in chain["eval_cmds"].values()),
        *(cmdline(c) for c in chain.get("litert_commands", {}).values()),
        "python benchmarks/prune_recipes.py "
        + cmdline(chain_args(args))
        + "   # runs all of the above and the fp32 TFLite exports, then the latency (cached in "
        + f"{rel(chain['work'])}/chain_{best}.latency.json and .litert_latency.json)",
        "```",
        "",
    ]
    name = f"prune_{best}{tag.replace(' ', '_')}"
    items += [
        json_row("int8_unpruned", 1.0, ref, be, True, cmdline(chain["commands"]["export_unpruned"])),
        json_row(
            f"{name}_ptq_int8",
            mr,
            ref,
            pe,
            True,
            " && ".join(cmdline(c) for c in (chain["prune"]["command"], chain["commands"]["export_ptq"])),
        ),
        json_row(
            f"{name}_qat_int8",
            mr,
            ref,
            ce,
            True,
            " && ".join(
                cmdline(c)
                for c in (
                    chain["prune"]["command"],
                    chain["commands"]["quantize"],
                    chain["commands"]["export"],
                )
            ),
        ),
    ]
    if carried:  # the earlier chain rows' JSON entries (int8 rows not produced by this run)
        names = {i["name"] for i in items}
        kept += [i["name"] for i in old["items"] if i["int8"] and i["name"] not in names]
    return out


def json_row(
    name: str, macs_ratio: float, ref: dict[str, Any], got: dict[str, Any], int8: bool, command: str
) -> dict[str, Any]:
    """One object of docs/prune_recipes.json (the keys issue 14 asks for), drops against the fp32 eval."""
    return {
        "name": name,
        "macs_ratio": round(macs_ratio, 4),
        "acc_drop_pp": round((ref["acc"] - got["acc"]) * 100, 3),
        "tar_1e3_drop_pp": round((ref["tar_1e3"] - got["tar_1e3"]) * 100, 3),
        "int8": int8,
        "command": command,
    }


def chain_args(args: argparse.Namespace) -> list[str]:
    """The options of this run that decide the chain's files (printed beside its numbers)."""
    out = []
    if args.chain_from is not None:
        out += ["--recipes", "none"] if not args.recipes else []
        for d in args.also:
            out += ["--also", rel(d.resolve())]
        out += ["--chain-from", rel(args.chain_from.resolve())]
    out += ["--qat-minutes", f"{args.qat_minutes:g}"]
    if args.qat_steps is not None:
        out += ["--qat-steps", str(args.qat_steps)]
    if args.qat_lr is not None:
        out += ["--qat-lr", str(args.qat_lr)]
    return out


def parity(export_json: Path) -> str:
    """Mean / min cosine of the exported fp32 ONNX to its PyTorch model (the export's own check)."""
    if not export_json.exists():
        return "?"
    par = load(export_json)[0]["parity"]
    return f"{par['mean_cosine']:.4f} / {par['min_cosine']:.4f}"


def group_rule() -> str:
    from edgeface.eval.groups import COMPARE_RULE

    return COMPARE_RULE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "prune_recipes")
    ap.add_argument(
        "--recipes", default="cosine,ekd,relation,cosine+ekd", help=f"of {','.join(RECIPES)}, or none"
    )
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock cap of every fine-tune")
    ap.add_argument("--steps", type=int, default=2000, help="step cap of every fine-tune")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--augment", default="basic", choices=("basic", "strong"))
    ap.add_argument(
        "--increments", type=int, default=1, help="iterative: prune in N increments, fine-tune after each"
    )
    ap.add_argument("--schedule", default="cosine", choices=("cosine", "linear", "constant"))
    ap.add_argument("--qat-minutes", type=float, default=6.0, help="wall-clock cap of the chain's QAT")
    ap.add_argument("--qat-steps", type=int, default=None, help="step cap of the chain's QAT")
    ap.add_argument(
        "--qat-lr", type=float, default=None, help="QAT learning rate (default: edgeface quantize's)"
    )
    ap.add_argument(
        "--chain-from",
        type=Path,
        default=None,
        help="--work folder of another budget whose best recipe the chain starts from (default: --work)",
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each concurrent fine-tune")
    ap.add_argument("--no-chain", action="store_true")
    ap.add_argument("--also", type=Path, action="append", default=[], help="--work folder of another budget")
    ap.add_argument(
        "--md", type=Path, default=ROOT / "docs" / "prune_recipes.md", help="tables (+ .json rows)"
    )
    ap.add_argument("--docs-only", action="store_true", help="only rewrite the docs from cached results")
    args = ap.parse_args()
    # "none": this --work only provides the references (fp32, unpruned int8) of a chain from --chain-from
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip() and r.strip() != "none"]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad:
        sys.exit(f"error: unknown recipe(s) {bad}; choose from {list(RECIPES)}")
    for name, v, lo in (("--qat-minutes", args.qat_minutes, 0.0), ("--qat-lr", args.qat_lr, 0.0)):
        if v is not None and not (math.isfinite(v) and v > lo):
            sys.exit(f"error: {name} must be a positive number, got {v}")
    if args.qat_steps is not None and args.qat_steps < 1:
        sys.exit(f"error: --qat-steps must be >= 1, got {args.qat_steps}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    chain_work = args.chain_from.resolve() if args.chain_from is not None else work
    for d in [*([chain_work] if args.chain_from is not None else []), *args.also]:
        if not (d / "settings.json").exists():
            sys.exit(f"error: {rel(d)} is not a --work folder of this script (no settings.json)")
    settings = work / "settings.json"  # the budget every cached row was made with: refuse to mix
    budget = {k: getattr(args, k) for k in ("minutes", "steps", "lr", "batch_size", "augment")}
    # recorded only when set, so folders made before these options existed keep matching
    optional = {"increments": 1, "schedule": "cosine"}
    budget.update({k: getattr(args, k) for k, d in optional.items() if getattr(args, k) != d})
    if settings.exists() and load(settings) != budget:
        sys.exit(f"error: {rel(work)} holds rows made with {load(settings)}; use another --work for {budget}")
    settings.write_text(json.dumps(budget))
    if args.docs_only:
        args.recipes = [r for r in RECIPES if (work / f"{r}.eval.json").exists()]
    old = earlier_docs(args.md)  # read once: the first write below must not lose what the second keeps
    rows = run_recipes(args, work)
    fp32 = load(evaluate_onnx("fp32", work))
    write_docs(fp32, work, rows, None, args, work, old)
    chain = None
    chain_rows = rows if chain_work == work else cached_rows(chain_work)
    if chain_rows and not args.no_chain:
        best = best_recipe(chain_rows)
        if not args.docs_only or (chain_work / f"chain_{best}.latency.json").exists():
            chain = run_chain(best, args, chain_work, work)
    write_docs(fp32, work, rows, chain, args, work, old)


if __name__ == "__main__":
    main()
