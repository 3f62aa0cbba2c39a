"""Export with unlabelled calibration images (a flat folder of faces): quantized with them, shipped without a
threshold and a warning that says how to set one; `verify` then needs --threshold until `edgeface
threshold` calibrates one on labelled faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from edgeface.converters.metadata import read_onnx_spec

from edgeface.spec import read_spec_json, spec_path_for
from tests.eval_support import aligned_dataset, split_by_identity
from tests.test_bad_input_support import assert_one_error, run
from tests.test_runtime_support import LFW

WEIGHTS = LFW.parents[1] / "models" / "mobilefacenet_ms1m.pt"


@pytest.fixture(scope="module")
def flat_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    flat = tmp_path_factory.mktemp("flat")
    images = [p for paths in list(split_by_identity().values())[:80] for p in paths[:1]]
    for p in images:
        shutil.copy(p, flat / p.name)  # no identity folders: nothing says who is who
    out = tmp_path_factory.mktemp("out")
    import contextlib
    import io

    from edgeface.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["export", "--int8", "--format", "onnx", "-m", "mobilefacenet", "-w", str(WEIGHTS),
                     "--calib", str(flat), "-o", str(out), "--calib-images", "32",
                     "--parity-images", "16"])  # fmt: skip
    return out / "mobilefacenet_int8.onnx", code, err.getvalue()


def test_flat_folder_exports_without_a_threshold(flat_export) -> None:
    art, code, err = flat_export
    assert code == 0, err[-2000:]
    inside = read_onnx_spec(onnx.load(str(art)))
    beside = read_spec_json(spec_path_for(art))
    assert inside.threshold is None and beside.threshold is None and inside.threshold_far is None
    assert "not in identity folders" in inside.provenance["threshold_unset"]
    assert inside.input_quant is not None  # quantized all the same (int8 input)
    warning = [ln for ln in err.replace("\r", "\n").split("\n") if "no verification threshold" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: ")  # on a line of its own
    assert f"edgeface threshold {art}" in warning[0]


def test_then_verify_needs_a_threshold_until_one_is_calibrated(flat_export, capsys) -> None:
    art, code, _ = flat_export
    assert code == 0
    a, b = sorted((LFW / "aligned112" / "Bob_Hope").glob("*.jpg"))[:2]
    assert_one_error(run(capsys, "verify", a, b, "--aligned", "--model", art), "has no calibrated threshold")
    r = run(capsys, "threshold", art, "--data", aligned_dataset(), "--aligned", "--fmr", "1e-2")
    assert r.code == 0, r.err
    v = run(capsys, "verify", a, b, "--aligned", "--model", art, "--json")
    assert v.code == 0, v.err
    d = json.loads(v.out)
    assert d["threshold"] == pytest.approx(read_spec_json(spec_path_for(art)).threshold) and d["match"]
