"""`edgeface export` on model shapes found in the wild (tests/_awkward_models.py): PReLU with trained-like
slopes (negative and > 1), `x.view(x.size(0), -1)` on a 112x96 input, a CNN-transformer hybrid with shape
arithmetic; multi-format export that keeps what passes; our failures as one line with exit 1."""

from __future__ import annotations

import json
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
from tests._awkward_models import (
    adaptive_pool_net,
    bn1d_head_net,
    prelu_view_net,
    shape_pool_net,
    tiny_face_transformer,
    tiny_hybrid,
)

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"
PV = "tests._awkward_models:prelu_view_net"


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def calib(pair_faces: Path) -> Path:
    return pair_faces


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
    module, rewrite = torch_prelu_rewrite(net)
    assert rewrite.rewritten == 6
    with torch.no_grad():
        assert torch.allclose(module(x), net(x), atol=1e-4, rtol=1e-4)


def _outputs(
    net: torch.nn.Module, proto: onnx.ModelProto, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime's output, torch's) for one random input of `size`."""
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ref = net(x).numpy()
    return _session(proto).run(None, {"input": x.numpy()})[0], ref


def test_shape_arithmetic_in_op_arguments_exports() -> None:
    """`h, w = x.shape[-2:]; F.avg_pool2d(x, (h, w))` cannot be traced with a symbolic batch (the pooling
    kernel must be a constant); the static-batch export takes it, and computes what torch does."""
    net = shape_pool_net()
    proto = export_float_onnx(net, (112, 112))
    out, ref = _outputs(net, proto, (112, 112))
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_adaptive_pooling_to_any_size_exports_exactly() -> None:
    """torch's TorchScript exporter refuses adaptive average pooling whose output size does not divide the
    input (a 112x112 head's (7, 7) pool on a 112x96 net's 7x6 map); it is two constant MatMuls, exact.
    The override is for the export only: torch's own symbolic is back afterwards."""
    import io

    from edgeface.converters.learned import weighted_nodes

    net = adaptive_pool_net()
    proto = export_float_onnx(net, (112, 96))
    out, ref = _outputs(net, proto, (112, 96))
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert "MatMul" in {n.op_type for n in proto.graph.node}
    # the pooling matrices do not pose as Linear layers (a quantize checkpoint matches layers to those)
    assert [n.op_type for n in weighted_nodes(proto)] == ["Conv", "Conv", "Gemm"]
    with pytest.raises(torch.onnx.errors.SymbolicValueError, match="not factor"), torch.no_grad():
        torch.onnx.export(
            net, (torch.randn(1, 3, 112, 96),), io.BytesIO(), dynamo=False, opset_version=17
        )  # torch's own, restored


def test_batchnorm1d_on_vectors_exports() -> None:
    """A BatchNorm1d after a Linear left as a Gemm (its input a concat of pooled features) and one on the
    [N, C] vector before it used to become 1x1 convs on 2-D tensors: an invalid graph ("Input tensor must
    have at least 3 dimensions"). The first folds into the Gemm, the second stays a BatchNormalization."""
    net = bn1d_head_net()
    proto = export_float_onnx(net, (112, 112))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 1 and ops.count("Gemm") == 1
    out, ref = _outputs(net, proto, (112, 112))
    assert np.abs(out - ref).max() < 1e-5


def test_transformer_encoder_exports_without_its_fused_fast_path() -> None:
    """nn.TransformerEncoderLayer in eval mode runs aten::_transformer_encoder_layer_fwd, which has no ONNX
    symbolic ("Exporting the operator ... is not supported"); the export turns the fast path off (and
    back on after), so the layer's plain ops are exported."""
    net = tiny_face_transformer()
    assert torch.backends.mha.get_fastpath_enabled()
    proto = export_float_onnx(net, (112, 112))
    assert torch.backends.mha.get_fastpath_enabled()
    out, ref = _outputs(net, proto, (112, 112))
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_failed_onnx_trace_prints_no_ir_dump(capfd: pytest.CaptureFixture) -> None:
    """torch dumps its whole TorchScript IR on stdout when an export fails; the user gets our one line."""
    from edgeface.converters.onnx_float import OPSET, _torch_to_onnx

    # the symbolic-batch attempt, which export_float_onnx then retries with a static batch
    with pytest.raises(torch.onnx.errors.SymbolicValueError):
        _torch_to_onnx(shape_pool_net(), (112, 112), OPSET, dynamic=True)
    out, err = capfd.readouterr()
    assert "Torch IR graph" not in out + err


def _channel_widths(proto: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel max - min of each tensor over the images in x (run one by one: static batch 1)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for t in tensors:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    sess = _session(probe)
    outs = [sess.run(tensors, {"input": x[i : i + 1]}) for i in range(len(x))]
    return {
        t: np.concatenate([o[k] for o in outs]).max(axis=(0, 2, 3))
        - np.concatenate([o[k] for o in outs]).min(axis=(0, 2, 3))
        for k, t in enumerate(tensors)
    }


def test_prelu_equalization_keeps_the_float_function_and_evens_the_channels(calib: Path) -> None:
    from edgeface.converters.equalize import equalize_prelu, layer_names
    from edgeface.converters.export import load_inputs

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model

    loaded = load_model(PV, None)
    net = loaded.model
    with torch.no_grad():  # a dead channel (always 0) and a constant one in the stem
        net.stem[0].weight[:2] = 0.0
        net.stem[1].weight[0], net.stem[1].bias[0] = 0.0, 0.0
        net.stem[1].bias[1] = 0.7
    slopes = torch.cat([m.weight.detach() for m in net.modules() if isinstance(m, torch.nn.PReLU)])
    assert slopes.min() < -1 and slopes.max() > 1  # negative slopes and slopes above 1
    paths = compression_images(calib)
    x_cal, x = load_inputs(paths[:16], loaded.spec), load_inputs(paths[-8:], loaded.spec)
    graph = prelu_as_max(export_float_onnx(net, (112, 96)), any_slope=True)
    sites = layer_names(graph)
    assert len(sites) == 4  # pw and res feed the residual Add: left alone
    eq, changed = equalize_prelu(graph, [x_cal])
    assert changed == len(sites)
    for t in eq.graph.initializer:
        assert np.isfinite(onnx.numpy_helper.to_array(t)).all(), t.name
    a = np.concatenate([_session(graph).run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    b = np.concatenate([_session(eq).run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()  # exact in float
    # what it is for: the per-tensor grid of the PReLU's input/output is set by its widest channel
    outs = [n.output[0] for n in graph.graph.node if n.name in sites]
    before, after = _channel_widths(graph, outs, x_cal), _channel_widths(eq, outs, x_cal)
    for t in outs:  # widest channel / median live channel
        live = before[t] > 1e-3 * before[t].max()
        s0, s1 = (w.max() / np.median(w[live]) for w in (before[t], after[t]))
        # measured 4.7 -> 1.5 (depthwise reader), 2.4 -> 1.8, 3.0 -> 1.5, 5.7 -> 2.3 (dense readers: half)
        assert s1 < 0.8 * s0, (t, s0, s1)


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
    stem = PV.replace(":", "_")  # a module:factory name gives files without the colon
    assert names == [f"{stem}_int8.onnx", f"{stem}_int8.tflite"]
    for r in reports:
        assert r["parity"]["mean_cosine"] >= 0.99, r
        spec = read_spec_json(spec_path_for(Path(r["path"])))
        assert spec.input_size == (112, 96)
        assert spec.crop_box() == (8.0, 0.0, 96.0, 112.0)  # the central 96 columns, not a squeeze
    proto = onnx.load(str(out / f"{PV.replace(':', '_')}_int8.onnx"))
    assert "PRelu" not in {n.op_type for n in proto.graph.node}  # every slope has its integer form
    by_format = {Path(r["path"]).suffix: r for r in reports}
    assert by_format[".onnx"].get("prelu_layers_equalized") == 4  # equalize.py on the graph
    # torch_rewrite on the module: the last PReLU's reader is a Linear behind a view (a Conv in ONNX)
    assert by_format[".tflite"].get("prelu_layers_equalized") == 3


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
    name = "tests._awkward_models_tiny_hybrid"  # the factory's colon is not kept in file names
    written = sorted(p.name for p in out.iterdir() if p.name.startswith(name))
    assert written == [f"{name}_fp32.onnx", f"{name}_fp32.onnx.json"]
    # the output folder is a pack of what passed, and only of that
    manifest = json.loads((out / "edgeface-pack.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == [f"{name}_fp32.onnx"]
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
    err = capsys.readouterr().err
    # the failure inside the exporter itself, not only where the summary error was raised
    assert "Traceback" in err and "direct cause of the following exception" in err


def test_torchscript_model_exports_to_onnx_and_gets_one_line_for_tflite_and_quantize(
    calib: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A factory returning torch.jit.script(net): ONNX export works; TFLite (litert-torch) and quantize
    (torch.fx) need the Python forward and used to fail with messages about state-dict entries and
    control flow. Each now says it is TorchScript and what to return instead, exit 1."""
    ref = "tests._user_model:scripted_face_net"
    base = ["--calib", str(calib), "--calib-images", "16", "--parity-images", "8"]
    assert main(["export", "-m", ref, "--fp32", "--format", "onnx", *base, "-o", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    code = main(["export", "-m", ref, "--fp32", "--format", "tflite", *base, "-o", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 1 and "TorchScript" in err and "plain nn.Module" in err and "Traceback" not in err, err
    quantize = ["quantize", "-m", ref, "--calib", str(calib), "--num-images", "8"]
    code = main([*quantize, "-o", str(tmp_path / "q.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "TorchScript" in err and "Traceback" not in err, err
