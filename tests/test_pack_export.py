"""`edgeface export` leaves a pack in its output folder (real MobileFaceNet, real LFW calibration faces): the
detector, the model's licence found beside its weights, the manifest, and on request one archive; a bad
pack option fails before the slow export and writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from edgeface.runtime.pack import MANIFEST, open_pack

from edgeface.cli.main import main
from tests.test_runtime_support import SHARED, raw

WEIGHTS = SHARED / "models" / "mobilefacenet_ms1m.pt"


@pytest.fixture(scope="module")
def calib_dir(pair_faces: Path) -> Path:
    return pair_faces


def export_args(calib: Path, out: Path, *extra: object) -> list[str]:
    return [
        str(a)
        for a in (
            *("export", "-m", "mobilefacenet", "-w", WEIGHTS, "--fp32", "--format", "onnx"),
            *("--calib", calib, "-o", out, "--calib-images", 48, "--parity-images", 16, *extra),
        )
    ]


@pytest.fixture(scope="module")
def exported(calib_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    d = tmp_path_factory.mktemp("export")
    out, archive = d / "artifacts", d / "mobilefacenet.tar.gz"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(export_args(calib_dir, out, "--archive", archive))
    assert code == 0, buf.getvalue()
    return out, archive, buf.getvalue()


def test_export_output_folder_is_a_pack(exported, monkeypatch, capsys) -> None:
    out, archive, stdout = exported
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        MANIFEST,
        "face_detection_yunet_2026may.onnx",
        "licenses/LICENSE.mobilefacenet_ms1m",
        "licenses/LICENSE.yunet",
        "mobilefacenet_fp32.onnx",
        "mobilefacenet_fp32.onnx.json",
    ]
    m = json.loads((out / MANIFEST).read_text())
    lic = {x["file"]: x for x in m["licenses"]}["licenses/LICENSE.mobilefacenet_ms1m"]
    assert lic["covers"] == ["mobilefacenet_fp32.onnx"]
    assert lic["origin"] == "found beside the weights mobilefacenet_ms1m.pt (LICENSE.mobilefacenet_ms1m)"
    assert (out / "licenses/LICENSE.mobilefacenet_ms1m").read_bytes() == (
        SHARED / "models" / "LICENSE.mobilefacenet_ms1m"
    ).read_bytes()
    assert stdout.splitlines()[-2].startswith(f"pack {out}: 1 artifact(s) (default mobilefacenet_fp32.onnx)")
    assert stdout.splitlines()[-1].startswith(f"archive {archive}")
    open_pack(out).verify()
    open_pack(archive).verify()
    # the pack runs with its own detector
    monkeypatch.setenv("EDGEFACE_YUNET", str(out / "nowhere.onnx"))
    a, b = raw("Jimmy_Carter", 2), raw("Jimmy_Carter", 4)
    for model in (out, archive):
        assert main(["verify", str(a), str(b), "--model", str(model), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["match"] is True


def test_bad_pack_options_fail_before_the_export_and_write_nothing(calib_dir, tmp_path, capsys) -> None:
    cases = [
        (["--archive", tmp_path / "x.rar"], "the name must end in one of"),
        (["--archive", tmp_path / "missing" / "x.tgz"], "does not exist"),
        (["--detector", tmp_path / "nope.onnx"], "face detector model not found"),
        (["--license", tmp_path / "nope.txt"], "licence file not found"),
        (["--no-pack", "--archive", tmp_path / "x.tgz"], "--no-pack writes no pack"),
    ]
    for extra, message in cases:
        code = main(export_args(calib_dir, tmp_path / "out", *extra))
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
