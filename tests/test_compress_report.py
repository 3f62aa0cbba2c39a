"""The compression report: one table (Markdown + JSON) comparing a compressed model with its fp32 parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeface.compress.quant import ptq
from edgeface.compress.report import compression_report, to_markdown, write_report
from edgeface.data.folders import compression_images
from edgeface.data.lfw import read_pairs, select_folds
from edgeface.models.loading import load_model

USER_MODEL = "tests._user_model_quant:small_face_net"


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory: pytest.TempPathFactory, lfw: Path) -> Path:
    """Two folds of real test pairs (5 genuine + 5 impostor each) beside the real images and groups."""
    root = tmp_path_factory.mktemp("lfw")
    (root / "aligned112").symlink_to(lfw / "aligned112")
    (root / "gender.csv").symlink_to(lfw / "gender.csv")
    pairs = select_folds(read_pairs(lfw / "pairs.txt"), (6, 7))
    lines = ["2 5"]
    for fold in (6, 7):
        fp = [p for p in pairs if p.fold == fold]
        for p in [x for x in fp if x.same][:5] + [x for x in fp if not x.same][:5]:
            (a, i), (b, j) = (s[:-4].split("/")[1].rsplit("_", 1) for s in (p.left, p.right))
            lines.append(f"{a} {int(i)} {int(j)}" if p.same else f"{a} {int(i)} {b} {int(j)}")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_report_table_and_files(small_lfw: Path, lfw: Path, tmp_path: Path) -> None:
    fp32 = load_model(USER_MODEL)
    q = ptq(
        fp32.model, fp32.spec, compression_images(lfw)[:8], bits="w8a8", calibration="minmax", progress=False
    )
    rep = compression_report(
        fp32,
        q,
        fp32.spec.replace(precision="w8a8"),
        small_lfw,
        wall_s=1.5,
        title="w8a8",
        folds=(1, 2),
        progress=False,
        command="edgeface quantize ...",
    )
    base, comp = rep["rows"]
    assert base["name"] == "fp32" and comp["name"] == "w8a8"
    # BN folded: its parameters disappear into the convs; the BN before a conv becomes a 1x1 depthwise conv
    assert 0 < comp["params"] <= base["params"] and base["macs"] > 0
    assert abs(comp["macs"] - base["macs"]) <= 0.05 * base["macs"]
    assert comp["size_bytes"] < 0.3 * base["size_bytes"]
    assert 0.9 < comp["cos_mean"] <= 1.0 and comp["cos_min"] <= comp["cos_mean"]
    assert base["n_pairs"] == comp["n_pairs"] == 20
    groups = rep["groups"]
    assert set(groups["fp32"]["groups"]) <= {"F", "M"} and groups["comparison"]["rule"]
    for g in groups["fp32"]["groups"].values():
        assert g["fnmr"]["n"] >= 0 and ("ci95" in g["fnmr"])
    md = to_markdown(rep)
    assert "| fp32 |" in md and "| w8a8 |" in md and "FNMR fp32" in md and "edgeface quantize ..." in md
    md_path, js_path = write_report(rep, tmp_path / "r.md")
    assert md_path.read_text() == md
    assert json.loads(js_path.read_text())["rows"][1]["size_bytes"] == comp["size_bytes"]
