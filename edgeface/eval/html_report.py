"""The comparison as one self-contained HTML page: inline CSS, plots as PNG data URIs, no script and no
network access, so it opens the same from a mail attachment, a CI artifact or an air-gapped laptop.

Every piece of text that comes from a file or a model (labels, paths, group names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
from typing import Any

from edgeface.eval.groups import COMPARE_RULE

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
thead th{background:#f0f0f0}
td.ref{background:#f7f7ff}
.flag{color:#b00;font-weight:bold}
.muted{color:#777;font-size:.85em}
.plots{display:flex;flex-wrap:wrap;gap:1em}
.plots figure{margin:0;flex:1 1 480px}
img{max-width:100%;height:auto;border:1px solid #ddd}
code{background:#f4f4f4;padding:0 .2em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f} %"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f' <span class="muted">[{ci[0] * 100:.2f}, {ci[1] * 100:.2f}]</span>'


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _row(name: str, cells: list[str], raw: bool = False) -> str:
    tds = "".join(f'<td class="ref">{c}</td>' if i == 0 else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f"<tr><th>{name if raw else _e(name)}</th>{tds}</tr>"


def _size(b: int | None, kind: str) -> str:
    if b is None:
        return "n/a"
    note = ' <span class="muted">(fp32 parameters)</span>' if kind == "pytorch" else ""
    return f"{b / 1e6:.2f} MB{note}"


def _fnmr_cell(r: dict[str, Any]) -> str:
    if not r["resolved"]:
        need = f"{r['impostor']:,} &lt; {r['impostors_needed']:,} impostors"
        return f'<span class="muted">not resolved ({need}); at the highest impostor: {_pct(r["fnmr"])}</span>'
    return f"{_pct(r['fnmr'])}{_ci(r['ci95'])}"


def _at(m: dict[str, Any], metric: str) -> str:
    r = m["at_threshold"][metric]
    counts = f"({r['errors']}/{r['n']:,})"
    return f"{_pct(r['rate'])}{_ci(r['ci95'])} {_muted(counts)}"


def _muted(text: str) -> str:
    return f'<span class="muted">{text}</span>'


def _latency(lat: dict[str, Any] | None, key: str) -> str:
    if lat is None or lat.get(key) is None:
        return '<span class="muted">n/a</span>'
    s = lat[key]
    return f'{s["p50"]:.2f} ms <span class="muted">(mean {s["mean"]:.2f}, min {s["min"]:.2f})</span>'


def _agreement(rec: dict[str, Any], key: str) -> str:
    a = rec.get("agreement_with_reference")
    if a is None:
        return '<span class="muted">reference</span>'
    if key == "decisions":
        if a["decision_agreement"] is None:
            return "n/a"
        return (
            f"{_pct(a['decision_agreement'])} of {a['pairs']:,} pairs "
            f'<span class="muted">(only ref wrong {a["only_reference_wrong"]}, only this wrong '
            f"{a['only_this_wrong']}, both {a['both_wrong']})</span>"
        )
    if key == "correlation":
        return "n/a" if a["score_correlation"] is None else f"{a['score_correlation']:.4f}"
    c = a["embedding_cosine"]
    return '<span class="muted">n/a (other embedding space)</span>' if c is None else (
        f"mean {c['mean']:.4f}, min {c['min']:.4f}"
    )  # fmt: skip


def render(report: dict[str, Any], det_png: bytes, roc_png: bytes) -> str:
    """The HTML page of a `compare` report (the same dict as its JSON)."""
    models = report["models"]
    head = "".join(f"<th>{_e(m['label'])}</th>" for m in models)
    rows = [
        _row(
            "kind",
            [
                _e(m["kind"]) + (f' <span class="muted">{_e(m["file"])}</span>' if m["file"] else "")
                for m in models
            ],
        ),  # fmt: skip
        _row("precision", [_e(m["precision"]) for m in models]),
        _row("size", [_size(m["size_bytes"], m["kind"]) for m in models]),
        _row(
            f"accuracy {_muted(_e(models[0]['accuracy']['definition']))}",
            [
                _pct(m["accuracy"]["value"])
                + (f" ± {m['accuracy']['std'] * 100:.2f}" if m["accuracy"]["std"] is not None else "")
                for m in models
            ],
            raw=True,
        ),
    ]
    keys = list(models[0]["fnmr_at_fmr"])
    for k in keys:
        rows.append(_row(f"FNMR @ FMR {k}", [_fnmr_cell(m["fnmr_at_fmr"][k]) for m in models]))
    rows += [
        _row("EER", [_pct(m["eer"]["eer"]) for m in models]),
        _row(
            "operating threshold",
            [
                f"{m['operating_threshold']:.4f} {_muted('(' + _e(m['at_threshold']['source']) + ')')}"
                for m in models
            ],
        ),
        _row("FMR at that threshold", [_at(m, "fmr") for m in models]),
        _row("FNMR at that threshold", [_at(m, "fnmr") for m in models]),
        _row("same decision as the reference", [_agreement(m, "decisions") for m in models]),
        _row("score correlation with the reference", [_agreement(m, "correlation") for m in models]),
        _row("embedding cosine to the reference", [_agreement(m, "cosine") for m in models]),
        _row(
            "latency: embed one aligned face (p50)", [_latency(m["latency"], "inference_ms") for m in models]
        ),
        _row(
            "latency: whole pipeline on a photo (p50)",
            [_latency(m["latency"], "pipeline_ms") for m in models],
        ),
        _row("images without a usable face", [str(m["failed_images"]["count"]) for m in models]),
    ]
    data = report["data"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>edgeface compare</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>edgeface compare</h1>",
        f"<p>{_e(data['description'])}. Reference: <b>{_e(models[0]['label'])}</b> (first column). "
        "Fractions are shown in percent; intervals are 95 %: FNMR @ FMR by subject bootstrap "
        f"({report['settings']['bootstrap']} replicates, the threshold re-estimated in each), rates at a "
        "fixed threshold by the Wilson score interval.</p>",
        f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
        "<h2>Curves</h2>",
        '<div class="plots">',
        f'<figure>{_img(det_png, "DET curves")}<figcaption class="muted">DET: FNMR against FMR (log axes); '
        "points: FNMR @ FMR with their bootstrap intervals.</figcaption></figure>",
        f'<figure>{_img(roc_png, "ROC curves")}<figcaption class="muted">ROC: true accept rate against '
        "false accept rate (log axis).</figcaption></figure>",
        "</div>",
    ]
    parts += _groups_section(models)
    parts += _failures_section(models)
    parts += [
        "<h2>Settings</h2>",
        f"<pre>{_e(_settings_text(report['settings']))}</pre>",
        _muted("Generated by <code>edgeface compare</code>; the same numbers are in the JSON report."),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _groups_section(models: list[dict[str, Any]]) -> list[str]:
    if not models[0].get("groups"):
        return []
    names = list(models[0]["groups"]["groups"])
    out = ["<h2>Per-group rates</h2>"]
    for metric, what in (("fnmr", "FNMR (genuine pairs)"), ("fmr", "FMR (same-group impostor pairs)")):
        head = "".join(f"<th>{_e(m['label'])}</th>" for m in models)
        rows = []
        for g in names:
            cells = []
            for m in models:
                r = (m.get("groups") or {}).get("groups", {}).get(g, {}).get(metric)
                if r is None:
                    cells.append("n/a")
                    continue
                cell = (
                    f'{_pct(r["rate"])}{_ci(r["ci95"])} <span class="muted">({r["errors"]}/{r["n"]})</span>'
                )
                ch = (m.get("group_changes") or {}).get("groups", {}).get(g, {}).get(metric)
                if ch is not None and ch["change"] is not None:
                    mark = ' <span class="flag">FLAGGED</span>' if ch["flagged"] else ""
                    cell += f"<br>{ch['change'] * 100:+.2f} pp{mark}"
                cells.append(cell)
            rows.append(_row(f"{g}", cells))
        out.append(f"<h3>{what}</h3>")
        out.append(
            f"<table><thead><tr><th>group</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    out.append(f'<p class="muted">Flag rule (change from the reference): {_e(COMPARE_RULE)}.</p>')
    return out


def _failures_section(models: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in models:
        f = m["failed_images"]
        if f["count"]:
            items = "".join(f"<li><code>{_e(x['image'])}</code>: {_e(x['reason'])}</li>" for x in f["images"])
            out.append(
                f"<details><summary>{_e(m['label'])}: {f['count']} image(s) without a usable face</summary>"
                f"<ul>{items}</ul></details>"
            )
    return ["<h2>Images without a usable face</h2>", *out] if out else []


def _settings_text(settings: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in settings.items())
