"""`edgeface export` to ONNX on the real MobileFaceNet and real LFW faces: spec inside and beside the file,
per-channel weight scales, parity through the runtime, and the failure modes (nothing left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgeface.converters.metadata import read_onnx_spec
from edgeface.runtime.backends import load_artifact
from onnx import helper, numpy_helper

from edgeface.cli.main import main
from edgeface.spec import read_spec_json, spec_path_for

SHARED = Path(__file__).parents[1].parent / "shared"
WEIGHTS = SHARED / "models" / "mobilefacenet_ms1m.pt"
LFW = SHARED / "data" / "lfw"


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 aligned faces of 48 compression-split identities (2 each, so impostor pairs exist)."""
    from edgeface.data.lfw import compression_split

    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    chosen = [ps[:2] for ps in by_id.values() if len(ps) >= 2][:48]
    root = tmp_path_factory.mktemp("calib")
    for ps in chosen:
        for p in ps:
            (root / p.parent.name).mkdir(exist_ok=True)
            shutil.copy(p, root / p.parent.name / p.name)
    return root


@pytest.fixture(scope="module")
def exported(calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    out = tmp_path_factory.mktemp("out")
    report = out / "report.json"
    from click.testing import CliRunner

    from edgeface.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "export",
            "-m",
            "mobilefacenet",
            "-w",
            str(WEIGHTS),
            "--precision",
            "fp32,int8",
            "--format",
            "onnx",
            "--calib",
            str(calib_dir),
            "-o",
            str(out),
            "--calib-images",
            "48",
            "--parity-images",
            "16",
            "--json",
        ],
    )
    report.write_text(result.output)
    return out, result.exit_code, result.output


def test_export_writes_named_artifacts_with_sidecars(exported: tuple[Path, int, str]) -> None:
    out, code, output = exported
    assert code == 0, output
    for prec in ("fp32", "int8"):
        art = out / f"mobilefacenet_{prec}.onnx"
        assert art.is_file() and spec_path_for(art).is_file()
    assert not list(out.glob("*.data")), "weights must live inside the .onnx file"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_spec_embedded_equals_sidecar_and_is_complete(exported: tuple[Path, int, str]) -> None:
    out, code, _ = exported
    art = out / "mobilefacenet_int8.onnx"
    embedded = read_onnx_spec(onnx.load(str(art)))
    assert embedded == read_spec_json(spec_path_for(art))
    # integer ONNX artifacts take NHWC (onnx_layout.py); the fp32 one keeps NCHW, ORT's fastest float layout
    assert embedded.precision == "w8a8" and embedded.layout == "NHWC" and embedded.embedding_dim == 128
    dims = [d.dim_value for d in onnx.load(str(art)).graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [112, 112, 3]
    assert read_onnx_spec(onnx.load(str(out / "mobilefacenet_fp32.onnx"))).layout == "NCHW"
    assert embedded.input_quant is not None and embedded.output_quant is not None
    assert embedded.threshold is not None and -1 < embedded.threshold < 1 and embedded.threshold_far == 1e-3
    assert embedded.provenance["parity"]["mean_cosine"] >= 0.99


def test_int8_has_per_channel_qdq_weights_and_opset(exported: tuple[Path, int, str]) -> None:
    out, _, _ = exported
    model = onnx.load(str(out / "mobilefacenet_int8.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    per_channel = 0
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits or inits[n.input[0]].dtype != np.int8:
            continue
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
        scale = inits[n.input[1]]
        if inits[n.input[0]].ndim == 4:
            assert axis == 0 and scale.shape == (inits[n.input[0]].shape[0],)
            per_channel += 1
    assert per_channel == 51  # every conv of MobileFaceNet
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Add"} <= ops


def test_int8_parity_through_runtime(exported: tuple[Path, int, str]) -> None:
    """Independently of the exporter's own check: run both artifacts through the runtime on fresh faces."""
    out, code, output = exported
    rows = json.loads(output)
    int8 = next(r for r in rows if r["precision"] == "int8")
    assert int8["parity"]["mean_cosine"] >= 0.99 and int8["per_channel_layers"] == 51
    from edgeface.runtime.preprocess import normalize, read_image

    from edgeface.data.lfw import read_pairs  # noqa: F401  (the LFW module loads: data present)

    faces = [read_image(p) for p in sorted((LFW / "aligned112").glob("A*/*.jpg"))[:8]]
    fp32 = load_artifact(out / "mobilefacenet_fp32.onnx", num_threads=1)
    q = load_artifact(out / "mobilefacenet_int8.onnx", num_threads=1)
    a, b = fp32.run(normalize(faces, fp32.spec)), q.run(normalize(faces, q.spec))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() > 0.99


def _export(args: list[str]) -> int:
    return main(["export", "-m", "mobilefacenet", "-w", str(WEIGHTS), *args])


def test_unknown_format_is_a_clear_error(
    calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = _export(
        ["--int8", "--format", "onnx,coreml", "--calib", str(calib_dir), "-o", str(tmp_path / "o")]
    )
    assert code == 2 and "unknown format 'coreml'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_calibration_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        _export(["--int8", "--format", "onnx", "--calib", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
        == 2
    )
    assert "image folder not found" in capsys.readouterr().err
    assert _export(["--int8", "--format", "onnx", "--calib", str(empty), "-o", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err


def test_output_path_is_a_file(calib_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert _export(["--int8", "--format", "onnx", "--calib", str(calib_dir), "-o", str(blocker)]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert _export(["--int8", "--format", "onnx", "--calib", str(calib_dir), "-o", str(blocker / "x")]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
