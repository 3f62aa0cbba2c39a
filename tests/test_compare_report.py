"""`edgeface compare`: two artifacts on one identity-folder dataset, one self-contained HTML page plus JSON,
and the page opened in headless Chromium (Debian's `chromium` package; CI installs it)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from tests.chromium_support import CHROMIUM, open_page
from tests.eval_support import LFW, aligned_dataset, reference_artifact, scratch, strict_json
from tests.test_bad_input_support import assert_one_error, run
from tests.test_runtime_support import int8_io_artifact


@functools.cache
def report() -> tuple[Path, dict, str]:
    """fp32 reference vs its int8-I/O twin, 16 identities x 3 aligned crops, per-group rates, latency."""
    from edgeface.cli.main import main

    out = scratch("compare") / "report.html"
    args = ["compare", str(reference_artifact()), str(int8_io_artifact()), "--data", str(aligned_dataset()),
            "--aligned", "--groups", str(LFW / "gender.csv"), "--bootstrap", "100", "--profile-runs", "3",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 0
    data = strict_json(out.with_suffix(".json").read_text())
    assert isinstance(data, dict)
    return out, data, out.read_text(encoding="utf-8")


def test_json_has_every_comparison() -> None:
    _, d, _ = report()
    ref, other = d["models"]
    assert ref["reference"] and not other["reference"] and "agreement_with_reference" not in ref
    for m in (ref, other):
        assert m["kind"] == "artifact" and m["size_bytes"] > 1_000_000
        assert set(m["fnmr_at_fmr"]) == {"1e-02", "1e-03", "1e-04"}
        assert m["latency"]["runs"] == 3 and m["latency"]["inference_ms"]["p50"] > 0
        assert m["latency"]["pipeline_ms"]["p50"] > 0  # the default raw photo through detection
        assert 0.9 <= m["accuracy"]["value"] <= 1.0 and m["groups"]["groups"]
    a = other["agreement_with_reference"]
    assert a["pairs"] == 48 + 1080 and a["decision_agreement"] > 0.98
    assert a["embedding_cosine"]["mean"] > 0.99  # int8 input/output quantization of the same network
    assert a["score_correlation"] > 0.99
    gc = other["group_changes"]
    assert "twice the mean change" in gc["rule"] and set(gc["groups"]) == set(ref["groups"]["groups"])


def test_html_is_self_contained() -> None:
    _, d, html = report()
    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    srcs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert len(srcs) == 2 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html
    for m in d["models"]:
        assert m["label"] in html
    assert "FLAGGED" in html or "+0.00 pp" in html or "pp" in html  # per-group changes are shown


def test_compare_bad_input(capsys, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert_one_error(run(capsys, "compare", reference_artifact(), "-o", out), "give --data DIR")
    assert_one_error(run(capsys, "compare", "mobilefacenet@", "--data", aligned_dataset(), "-o", out),
                     "NAME@WEIGHTS")  # fmt: skip
    assert_one_error(run(capsys, "compare", reference_artifact(), "--data", aligned_dataset(),
                         "-o", tmp_path / "nowhere" / "r.html"), "does not exist")  # fmt: skip
    assert_one_error(run(capsys, "compare", reference_artifact(), "--data", aligned_dataset(), "-o", out,
                         "--json", out), "different files")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """The page loads, both plots decode, the console is clean and nothing but the file and its inlined
    images is requested. The screenshot is kept beside the report for a person to look at."""
    if not CHROMIUM.is_file():
        pytest.skip(
            "needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium); CI installs it"
        )
    html, d, _ = report()
    page = open_page(html)
    assert page.title == "edgeface compare"
    assert len(page.images) == 2
    for img in page.images:
        assert img["complete"] and img["width"] > 300 and img["height"] > 200, img
    assert page.errors == [] and [c for c in page.console if c["level"] == "warning"] == [], page.console
    assert all(u.startswith(("file:", "data:")) for u in page.requests), page.requests
    assert all(m["label"] in page.text for m in d["models"]) and "FNMR @ FMR 1e-03" in page.text
    assert page.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(page.screenshot) > 50_000
    (html.parent / "screenshot.png").write_bytes(page.screenshot)


def test_compare_on_lfw_pairs(capsys, tmp_path: Path) -> None:
    """The LFW protocol path: k-fold accuracy per model, the same pairs, agreement with the reference."""
    lines = (LFW / "pairs.txt").read_text().splitlines()[1:]
    body = [*lines[3000:3010], *lines[3300:3310], *lines[3600:3610], *lines[3900:3910]]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2 10\n" + "\n".join(body) + "\n")
    out = tmp_path / "lfw.html"
    r = run(capsys, "compare", reference_artifact(), int8_io_artifact(), "--pairs", pairs,
            "--images", LFW / "aligned112", "--folds", "1-2", "--profile-runs", "0", "--bootstrap", "50",
            "-o", out)  # fmt: skip
    assert r.code == 0, r.err
    d = strict_json((tmp_path / "lfw.json").read_text())
    assert isinstance(d, dict)
    ref, other = d["models"]
    assert ref["accuracy"]["definition"] == "LFW k-fold accuracy" and ref["accuracy"]["value"] >= 0.9
    assert ref["pairs"] == {"genuine": 20, "impostor": 20, "lost": 0} and ref["latency"] is None
    assert other["agreement_with_reference"]["pairs"] == 40
    assert other["agreement_with_reference"]["embedding_cosine"]["min"] > 0.99
    assert "LFW pairs" in out.read_text()
