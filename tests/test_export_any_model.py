"""`edgeface export` on model shapes found in the wild (tests/_awkward_models.py): PReLU with trained-like
slopes (negative and > 1), `x.view(x.size(0), -1)` on a 112x96 input, a CNN-transformer hybrid with shape
arithmetic; multi-format export that keeps what passes; our failures as one line with exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgeface.converters import qdq
from edgeface.converters.onnx_float import export_float_onnx, prelu_as_max
from edgeface.converters.torch_rewrite import prelu_as_max as torch_prelu_rewrite

from edgeface.cli.main import main
from edgeface.spec import read_spec_json, spec_path_for
from tests._awkward_models import prelu_view_net, tiny_hybrid

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"
PV = "tests._awkward_models:prelu_view_net"


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 aligned faces of 40 compression-split identities (the export minimum is 72)."""
    from edgeface.data.lfw import compression_split

    by_id: dict[str, list[Path]] = {}
    for p in compression_split(LFW):
        by_id.setdefault(p.parent.name, []).append(p)
    root = tmp_path_factory.mktemp("calib")
    for ps in [ps[:2] for ps in by_id.values() if len(ps) >= 2][:40]:
        for p in ps:
            (root / p.parent.name).mkdir(exist_ok=True)
            shutil.copy(p, root / p.parent.name / p.name)
    return root


def test_prelu_rewrites_are_exact_for_any_slope() -> None:
    net = prelu_view_net()
    slopes = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.PReLU)])
    assert slopes.min() < -1 and slopes.max() > 1  # realistic slopes, not the 0.25 initialisation
    x = torch.randn(2, 3, 112, 96)
    proto = export_float_onnx(net, (112, 96))
    rewritten = prelu_as_max(proto, any_slope=True)
    assert "PRelu" not in {n.op_type for n in rewritten.graph.node}
    a = _session(proto).run(None, {"input": x[:1].numpy()})[0]
    b = _session(rewritten).run(None, {"input": x[:1].numpy()})[0]
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())
    module, count = torch_prelu_rewrite(net)
    assert count == 6
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-4, rtol=1e-4)


def test_shape_arithmetic_folds_and_only_float_tensors_get_quantizers() -> None:
    proto = export_float_onnx(tiny_hybrid(), (112, 112))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Shape", "Gather", "ConstantOfShape", "Cast"}  # folded for the static batch
    plan = qdq.plan_graph(proto)
    x = np.random.default_rng(0).standard_normal((4, 3, 112, 112)).astype(np.float32)
    stats = qdq.collect_stats(proto, plan.points, [x])
    act = qdq.activation_plan(proto, {p: stats.range(p, "minmax", 8) for p in plan.points})
    model, _, _ = qdq.build_qdq(proto, act)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    quantized = [n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and all(types.get(t) == onnx.TensorProto.FLOAT for t in quantized)
    floats = {op: why for _, op, why in plan.float_ops}
    assert {"LayerNormalization", "Softmax"} <= set(floats)  # listed, with the reason from the table
    assert "LayerNorm" in floats["LayerNormalization"]
    assert any(n.op_type == "Gemm" for n in model.graph.node)  # Linear layers run as QGemm


@pytest.fixture(scope="module")
def awkward_export(calib: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, list, str]:
    out = tmp_path_factory.mktemp("pv")
    args = ["export", "-m", PV, "--int8", "--format", "onnx,tflite", "--calib", str(calib), "-o", str(out)]
    args += ["--calib-images", "64", "--parity-images", "16", "--json"]
    import contextlib
    import io

    err, so = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(so):
        code = main(args)
    text = so.getvalue()
    reports = json.loads(text[text.index("[") :]) if "[" in text else []
    return code, out, reports, err.getvalue()


def test_prelu_view_112x96_exports_int8_in_both_formats(awkward_export: tuple[int, Path, list, str]) -> None:
    code, out, reports, err = awkward_export
    assert code == 0, err
    assert "Traceback" not in err
    names = sorted(Path(r["path"]).name for r in reports)
    assert names == [f"{PV}_int8.onnx", f"{PV}_int8.tflite"]
    for r in reports:
        assert r["parity"]["mean_cosine"] >= 0.99, r
        spec = read_spec_json(spec_path_for(Path(r["path"])))
        assert spec.input_size == (112, 96)
        assert spec.crop_box() == (8.0, 0.0, 96.0, 112.0)  # the central 96 columns, not a squeeze
    proto = onnx.load(str(out / f"{PV}_int8.onnx"))
    assert "PRelu" not in {n.op_type for n in proto.graph.node}  # every slope has its integer form


def test_multi_format_keeps_what_passes(calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o"
    args = [
        "export",
        "-m",
        "tests._awkward_models:tiny_hybrid",
        "--precision",
        "fp32,int8",
        "--format",
        "onnx",
    ]
    args += ["--calib", str(calib), "-o", str(out), "--calib-images", "64", "--parity-images", "16"]
    code = main([*args, "--min-cosine", "0.99999"])
    err = capsys.readouterr().err
    assert code == 3, err
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    name = "tests._awkward_models:tiny_hybrid"
    assert written == [f"{name}_fp32.onnx", f"{name}_fp32.onnx.json"]
    assert f"{name}_int8.onnx mean cosine" in err and "not written" in err and "Traceback" not in err


def test_a_model_we_cannot_export_is_one_line_exit_1(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["export", "-m", "tests._awkward_models:fft_net", "--fp32", "--format", "onnx"]
    args += ["--calib", str(calib), "-o", str(tmp_path / "o"), "--json"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
    assert "onnx fp32 export failed" in err and "fft" in err.lower()
    assert main(["--debug", *args]) == 1
    assert "Traceback" in capsys.readouterr().err
