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
3. Chain: the recipe with the best TAR@FAR=1e-3 -> `edgeface quantize --method qat` (int8, short) ->
   `edgeface export --int8 --format onnx`, evaluated as an artifact; against `edgeface export --int8` of
   the unpruned model. ORT latency: batch 1, one thread, the two artifacts interleaved round by round.

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
    ]  # fmt: skip


def export_fp32_cmd(name: str, work: Path) -> list[str]:
    weights = WEIGHTS if name == "fp32" else rel(work / f"{name}.pt")
    return [
        "edgeface", "export", "-m", MODEL, "-w", weights, "--fp32", "--format", "onnx",
        "--calib", LFW, "--no-pack", "-o", rel(work / f"{name}_fp32"), "--json",
    ]  # fmt: skip


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
    """ORT, batch 1, one thread, the artifacts' own input; interleaved so load hits all alike."""
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
            "fp32_pruned_vs_fp32_unpruned": speedup("fp32_unpruned", "fp32_pruned"),
        },
        "n_rounds": rounds,
        "runs_per_round": runs,
    }


def run_chain(best: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base_dir = work / "int8_unpruned"
    base_art = base_dir / f"{MODEL}_int8.onnx"
    export_base = [
        "edgeface", "export", "-m", MODEL, "-w", WEIGHTS, "--int8", "--format", "onnx",
        "--calib", LFW, "--no-pack", "-o", rel(base_dir), "--json",
    ]  # fmt: skip
    if not base_art.exists():
        run(export_base, stdout=work / "int8_unpruned.export.json")
    base_ev = evaluate("int8_unpruned", rel(base_art), None, work)

    qat = work / f"chain_{best}.qat.pt"
    quant = [
        "edgeface", "quantize", "-m", MODEL, "-w", rel(work / f"{best}.pt"), "--method", "qat",
        "--bits", "w8a8", "--calib", LFW, "--num-images", "512", "--epochs", "1",
        "--max-minutes", str(args.qat_minutes), "-o", rel(qat), "--json",
    ]  # fmt: skip
    if not qat.exists():
        run(quant, stdout=work / f"chain_{best}.qat.json")
    art_dir = work / f"chain_{best}"
    art = art_dir / f"{MODEL}_int8.onnx"
    export = [
        "edgeface", "export", "-m", MODEL, "-w", rel(qat), "--int8", "--format", "onnx",
        "--calib", LFW, "--no-pack", "--min-cosine", "0.95", "-o", rel(art_dir), "--json",
    ]  # fmt: skip
    if not art.exists():
        run(export, stdout=work / f"chain_{best}.export.json")
    chain_ev = evaluate(f"chain_{best}", rel(art), None, work)

    lat_file = work / f"chain_{best}.latency.json"
    arts = {
        "int8_unpruned": base_art,
        "chain": art,
        "fp32_unpruned": onnx_fp32("fp32", work),
        "fp32_pruned": onnx_fp32(best, work),
    }
    if not lat_file.exists():
        print(f"latency: {args.rounds} interleaved rounds x {args.runs} calls of {list(arts)}", flush=True)
        lat = latency(arts, args.rounds, args.runs)
        lat_file.write_text(json.dumps(lat, indent=1))
    return {
        "best": best,
        "commands": {"export_unpruned": export_base, "quantize": quant, "export": export},
        "eval_cmds": {
            "int8_unpruned": eval_cmd(rel(base_art), None, base_ev),
            "chain": eval_cmd(rel(art), None, chain_ev),
        },
        "base_eval": load(base_ev),
        "chain_eval": load(chain_ev),
        "qat": load(work / f"chain_{best}.qat.json"),
        "latency": load(lat_file),
        "size": {"int8_unpruned": base_art.stat().st_size, "chain": art.stat().st_size},
        "export_json": {
            "int8_unpruned": work / "int8_unpruned.export.json",
            "chain": work / f"chain_{best}.export.json",
        },
    }


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


def recipe_row(
    name: str, r: dict[str, Any], work: Path, fp32: dict[str, Any], base_conv: int, batch: int, tag: str = ""
) -> tuple[str, dict[str, Any]]:
    """One table line and one JSON row of a fine-tuned recipe."""
    ref = metrics(fp32)
    pr, ev = r["prune"], r["eval"]
    m = metrics(ev)
    p = pr["prune"]
    conv = count_conv_macs(work / f"{name}.pt")
    ft = pr["finetune"] or {}
    fts = ft if isinstance(ft, dict) else (ft[-1] if ft else {})
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
    item = {
        "name": f"prune_{name}{tag.replace(' ', '_')}",
        "macs_ratio": round(mr, 4),
        "acc_drop_pp": round((ref["acc"] - m["acc"]) * 100, 3),
        "tar_1e3_drop_pp": round((ref["tar_1e3"] - m["tar_1e3"]) * 100, 3),
        "int8": False,
        "command": cmdline(r["command"]),
    }
    return line, item


def also_rows(
    dirs: list[Path], fp32: dict[str, Any], base_conv: int, header: list[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of other budgets (their own --work folders, run alone rather than side by side)."""
    lines: list[str] = []
    items: list[dict[str, Any]] = []
    cmds: list[str] = []
    for d in dirs:
        budget = load(d / "settings.json")
        for name in RECIPES:
            if not (d / f"{name}.eval.json").exists():
                continue
            pr = load(d / f"{name}.prune.json")
            r = {"prune": pr, "eval": load(d / f"{name}.eval.json"), "command": pr["command"]}
            tag = f" {budget['minutes']:g}min"
            line, item = recipe_row(name, r, d, fp32, base_conv, budget["batch_size"], tag)
            lines.append(line)
            items.append(item)
            threads = pr.get("threads")
            env = f"OMP_NUM_THREADS={threads} " if threads else ""
            cmds.append(env + cmdline(pr["command"]))
    if not lines:
        return [], []
    out = [
        "### Other budgets",
        "",
        "The same structure and settings with a longer fine-tune, run by itself (not side by side with the "
        "other recipes, so not comparable with them step for step); cached in its own `--work` folder and "
        "added here with `--also DIR`.",
        "",
        *header,
        *lines,
        "",
        "```bash",
        *cmds,
        "```",
        "",
    ]
    return out, items


def write_docs(fp32: dict[str, Any], rows: dict[str, dict[str, Any]], chain: dict[str, Any] | None,
               args: argparse.Namespace, work: Path) -> None:  # fmt: skip
    ref = metrics(fp32)
    base_macs = base_conv = None
    items: list[dict[str, Any]] = []
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
        f"table. fp32 reference (parity {parity(work / 'fp32.export.json')}):",
        "",
        "```bash",
        cmdline(export_fp32_cmd("fp32", work)),
        cmdline(eval_cmd(rel(work / "fp32_fp32" / f"{MODEL}_fp32.onnx"), None, work / "fp32.eval.json")),
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
        base_conv = count_conv_macs(WEIGHTS)
        ratio = load(work / "ratio.json")
        lines += [
            "## Recovery losses on one budget",
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
        extra, extra_items = also_rows(args.also, fp32, base_conv, TABLE_HEADER)
        lines += extra
        items += extra_items
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
        if extra_items:
            eb = min(extra_items, key=lambda r: r["tar_1e3_drop_pp"])
            a_ok, t_ok = eb["acc_drop_pp"] <= 0.3, eb["tar_1e3_drop_pp"] <= 1.0
            lines += [
                f"Best of the other budgets by TAR@FAR=1e-3: `{eb['name']}`: accuracy "
                f"{pp(-eb['acc_drop_pp'] / 100)} ({'met' if a_ok else 'NOT met'}), TAR@1e-3 "
                f"{pp(-eb['tar_1e3_drop_pp'] / 100)} ({'met' if t_ok else 'NOT met'}).",
                "",
            ]
    if chain is not None:
        be, ce = metrics(chain["base_eval"]), metrics(chain["chain_eval"])
        lat = chain["latency"]
        sp, sf = lat["speedup"]["chain_vs_int8_unpruned"], lat["speedup"]["fp32_pruned_vs_fp32_unpruned"]
        bms, cms = lat["median_ms"]["int8_unpruned"], lat["median_ms"]["chain"]
        best = chain["best"]
        bp = rows[best]["prune"]["prune"]
        mr = bp["macs_after"] / bp["macs_before"]
        qat = chain["qat"]
        qsteps = qat["record"].get("steps", "?")
        tar_ok = ref["tar_1e3"] - ce["tar_1e3"] <= 0.015
        fast_ok = cms < bms
        lines += [
            "## Chain: prune + int8 QAT + ONNX export",
            "",
            f"The `{best}` pruned model, then a short int8 QAT ({args.qat_minutes:g} min cap, "
            f"{qsteps} steps) and "
            "`edgeface export --int8 --format onnx`; against the unpruned model's `edgeface export --int8` "
            "(calibrated PTQ, same exporter). Both artifacts evaluated through `edgeface.runtime` (ORT) like "
            "fp32. Latency: ORT, batch 1, one thread, the artifact's own input, "
            f"{lat['n_rounds']} interleaved "
            f"rounds of {lat['runs_per_round']} calls (median of per-round means; speed-up = median of "
            "per-round ratios), on the shared machine under load.",
            "",
            "| artifact | size | export parity | LFW acc. | vs fp32 | TAR@1e-3 | vs fp32 "
            "| TAR@1e-2 | ORT ms (1 thread) | per-group change vs fp32 (flag rule) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key, ev, ms in (("int8_unpruned", chain["base_eval"], bms), ("chain", chain["chain_eval"], cms)):
            m = metrics(ev)
            label = "int8, unpruned (PTQ export)" if key == "int8_unpruned" else f"pruned ({best}) + QAT int8"
            lines.append(
                f"| {label} | {chain['size'][key] / 1e6:.2f} MB | {parity(chain['export_json'][key])} "
                f"| {pct(m['acc'])} "
                f"| {pp(m['acc'] - ref['acc'])} | {pct(m['tar_1e3'])} | {pp(m['tar_1e3'] - ref['tar_1e3'])} "
                f"| {pct(m['tar_1e2'])} | {ms:.2f} "
                f"| {groups_cell(group_change(fp32, ev))} |"
            )
        lines += [
            "",
            f"Speed-up of the chain artifact over the unpruned int8 artifact: {sp['median']:.2f}x "
            f"(faster in {sp['faster_rounds']}/{lat['n_rounds']} rounds). The same pruned model "
            "as fp32 ONNX: "
            f"{lat['median_ms']['fp32_pruned']:.2f} ms against {lat['median_ms']['fp32_unpruned']:.2f} ms "
            f"unpruned ({sf['median']:.2f}x, faster in {sf['faster_rounds']}/{lat['n_rounds']} rounds). "
            "Acceptance (TAR@1e-3 within "
            "1.5 pp "
            f"of fp32, faster in ORT than unpruned int8): TAR {pp(ce['tar_1e3'] - ref['tar_1e3'])} "
            f"({'met' if tar_ok else 'NOT met'}); latency {cms:.2f} vs {bms:.2f} ms "
            f"({'met' if fast_ok else 'NOT met'}).",
            "",
            "```bash",
            *(cmdline(c) for c in chain["commands"].values()),
            *(cmdline(c) for c in chain["eval_cmds"].values()),
            "python benchmarks/prune_recipes.py   # runs all of the above, then the latency (cached in "
            f"{rel(work)}/chain_{best}.latency.json)",
            "```",
            "",
        ]
        items.append(
            {
                "name": "int8_unpruned",
                "macs_ratio": 1.0,
                "acc_drop_pp": round((ref["acc"] - be["acc"]) * 100, 3),
                "tar_1e3_drop_pp": round((ref["tar_1e3"] - be["tar_1e3"]) * 100, 3),
                "int8": True,
                "command": cmdline(chain["commands"]["export_unpruned"]),
            }
        )
        items.append(
            {
                "name": f"prune_{best}_qat_int8",
                "macs_ratio": round(mr, 4),
                "acc_drop_pp": round((ref["acc"] - ce["acc"]) * 100, 3),
                "tar_1e3_drop_pp": round((ref["tar_1e3"] - ce["tar_1e3"]) * 100, 3),
                "int8": True,
                "command": " && ".join(
                    cmdline(c)
                    for c in (
                        rows[best]["command"],
                        chain["commands"]["quantize"],
                        chain["commands"]["export"],
                    )
                ),
            }
        )
    lines += [
        "Longer budgets (the issue allows 90 minutes per recipe): `python benchmarks/prune_recipes.py --work "
        "artifacts/prune_recipes_90 --minutes 90 --md artifacts/prune_recipes_90/prune_recipes.md` (a work "
        "folder holds rows of one budget only and refuses others; copy `ratio.json` into it to skip the "
        "search). An interrupted run continues where it stopped when the same command is run again.",
        "",
    ]
    missing = [n for n in RECIPES if n not in rows]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)} (`--recipes` to add them; cached rows are kept).", ""]
    lines += [f"Flag rule: {group_rule()}.", ""]
    md, js = args.md, args.md.with_suffix(".json")
    for path, text in ((md, "\n".join(lines)), (js, json.dumps(items, indent=1) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"wrote {rel(md)} and {rel(js)}")


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
    ap.add_argument("--recipes", default="cosine,ekd,relation,cosine+ekd", help=f"of {','.join(RECIPES)}")
    ap.add_argument("--minutes", type=float, default=25.0, help="wall-clock cap of every fine-tune")
    ap.add_argument("--steps", type=int, default=2000, help="step cap of every fine-tune")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--augment", default="basic", choices=("basic", "strong"))
    ap.add_argument("--qat-minutes", type=float, default=6.0)
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
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad:
        sys.exit(f"error: unknown recipe(s) {bad}; choose from {list(RECIPES)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "settings.json"  # the budget every cached row was made with: refuse to mix
    budget = {k: getattr(args, k) for k in ("minutes", "steps", "lr", "batch_size", "augment")}
    if settings.exists() and load(settings) != budget:
        sys.exit(f"error: {rel(work)} holds rows made with {load(settings)}; use another --work for {budget}")
    settings.write_text(json.dumps(budget))
    if args.docs_only:
        args.recipes = [r for r in RECIPES if (work / f"{r}.eval.json").exists()]
    rows = run_recipes(args, work)
    fp32 = load(evaluate_onnx("fp32", work))
    write_docs(fp32, rows, None, args, work)
    chain = None
    if rows and not args.no_chain:
        best = best_recipe(rows)
        if args.docs_only:
            if (work / f"chain_{best}.latency.json").exists():
                chain = run_chain(best, args, work)
        else:
            chain = run_chain(best, args, work)
    write_docs(fp32, rows, chain, args, work)


if __name__ == "__main__":
    main()
