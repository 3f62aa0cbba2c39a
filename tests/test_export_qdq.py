"""The QDQ builder's two special graphs: w6a6 as QuantizeLinear-Clip-DequantizeLinear, and PReLU rewritten
as Max(x, a*x) on one uint8 grid (exact, and no float operator left in ORT's optimized graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgeface.converters import qdq
from edgeface.converters.onnx import build_onnx
from edgeface.converters.onnx_float import export_float_onnx, prelu_as_max
from edgeface.converters.parity import cosine_rows
from edgeface.runtime.preprocess import normalize, read_image
from onnx import numpy_helper
from torch import nn

from edgeface.data.lfw import compression_split
from edgeface.spec import ModelSpec

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"
SPEC = ModelSpec(name="t", input_size=(32, 32), embedding_dim=16)


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.b = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.PReLU(16)
        )
        self.c = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU6())
        self.head = nn.Sequential(nn.Conv2d(16, 16, 16, groups=16), nn.Flatten(), nn.Linear(16, 16))
        with torch.no_grad():
            for p in self.modules():
                if isinstance(p, nn.PReLU):
                    p.weight.uniform_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.head(self.c(y + self.b(y)))


def _faces(n: int) -> np.ndarray:
    paths = compression_split(LFW)[:n]
    return normalize([read_image(p) for p in paths], SPEC)


def _session(proto: onnx.ModelProto, optimized: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_prelu_as_max_is_exact_in_float() -> None:
    net = PReLUNet().eval()
    proto = export_float_onnx(net, SPEC.input_size)
    rewritten = prelu_as_max(proto)
    assert "PRelu" not in {n.op_type for n in rewritten.graph.node}
    x = _faces(4)
    a = _session(proto).run(None, {"input": x})[0]
    b = _session(rewritten).run(None, {"input": x})[0]
    assert np.abs(a - b).max() < 1e-5


def test_int8_prelu_network_runs_fully_integer(tmp_path: Path) -> None:
    net = PReLUNet().eval()
    proto = export_float_onnx(net, SPEC.input_size)
    graph = prelu_as_max(proto)
    x = _faces(48)
    stats = qdq.collect_stats(graph, qdq.quant_points(graph), [x[:32]])
    built = build_onnx(proto, SPEC, "int8", stats)
    opt = tmp_path / "opt.onnx"
    sess = _session(built.proto, opt)
    ops = {n.op_type for n in onnx.load(str(opt)).graph.node}
    assert not ops & {"PRelu", "DequantizeLinear", "QuantizeLinear", "Conv"}, ops  # nothing float left
    assert "Max" in ops and "QLinearConv" in ops
    held = x[32:]
    y = built.spec.output_quant.dequantize(
        sess.run(None, {"input": built.spec.input_quant.quantize(held.transpose(0, 2, 3, 1))})[0]
    )
    with torch.no_grad():
        ref = net(torch.from_numpy(held)).numpy()
    assert cosine_rows(y, ref).mean() > 0.98


def test_nhwc_input_and_space_to_depth_stem_are_bit_exact() -> None:
    """The artifact (NHWC input, stem through SpaceToDepth) gives the same integers as the plain QDQ graph."""
    net = PReLUNet().eval()
    proto = export_float_onnx(net, SPEC.input_size)
    graph = prelu_as_max(proto)
    x = _faces(16)
    stats = qdq.collect_stats(graph, qdq.quant_points(graph), [x])
    built = build_onnx(proto, SPEC, "int8", stats)
    ops = [n.op_type for n in built.proto.graph.node]
    assert (
        ops[0] == "Transpose"
        and "SpaceToDepth" in ops
        and "SpaceToDepth" not in {n.op_type for n in built.drift_proto.graph.node}
    )
    assert built.spec.layout == "NHWC"
    q = built.spec.input_quant.quantize(x)
    plain = _session(built.drift_proto).run(None, {"input": q})[0]
    fast = _session(built.proto).run(None, {"input": np.ascontiguousarray(q.transpose(0, 2, 3, 1))})[0]
    assert plain.dtype == np.uint8 and np.array_equal(plain, fast)


def test_w6a6_is_qcdq_on_the_6bit_grid() -> None:
    net = PReLUNet().eval()
    proto = export_float_onnx(net, SPEC.input_size)
    graph = prelu_as_max(proto)
    x = _faces(32)
    stats = qdq.collect_stats(graph, qdq.quant_points(graph), [x])
    built = build_onnx(proto, SPEC, "w6a6", stats)
    nodes = list(built.proto.graph.node)
    by_output = {o: n for n in nodes for o in n.output}
    clips = [
        n for n in nodes if n.op_type == "Clip" and by_output.get(n.input[0], n).op_type == "QuantizeLinear"
    ]
    assert clips, "no QuantizeLinear -> Clip pairs"
    inits = {t.name: numpy_helper.to_array(t) for t in built.proto.graph.initializer}
    for c in clips:
        assert int(inits[c.input[1]]) == 0 and int(inits[c.input[2]]) == 63  # 64 levels in uint8 storage
    weights = [v for k, v in inits.items() if k.endswith(".weight_quantized")]
    assert weights and all(np.abs(w).max() <= 31 for w in weights)
    assert built.spec.precision == "w6a6"


class GroupedNet(nn.Module):
    """A grouped (2 channels per group, not depthwise) conv as in arcface_torch's mbf, then a PReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=8), nn.PReLU(16))
        self.head = nn.Sequential(nn.Conv2d(16, 16, 16, groups=16), nn.Flatten(), nn.Linear(16, 16))
        with torch.no_grad():
            self.grouped[1].weight.uniform_(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.grouped(self.stem(x)))


def test_grouped_conv_stays_float_and_prelu_is_max_in_every_precision(tmp_path: Path) -> None:
    """ORT's int8 grouped-conv kernel is slower than fp32: the int8 artifact keeps that conv float, and the
    runtime's session options stop ORT from quantizing it back (ORT_KEEP_FLOAT)."""
    from edgeface.converters.onnx import grouped_convs
    from edgeface.runtime.backends import ORT_KEEP_FLOAT

    net = GroupedNet().eval()
    proto = export_float_onnx(net, SPEC.input_size)
    fp32 = build_onnx(proto, SPEC, "fp32")
    assert "PRelu" not in {n.op_type for n in fp32.proto.graph.node}  # Max(x, a*x) in fp32 too
    graph = prelu_as_max(proto)
    x = _faces(32)
    stats = qdq.collect_stats(graph, qdq.quant_points(graph), [x])
    built = build_onnx(proto, SPEC, "int8", stats)
    names = grouped_convs(graph)
    assert len(names) == 1 and names[0] in built.spec.weight_quant
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry(*ORT_KEEP_FLOAT)
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(built.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    groups = {}
    for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node:
        g = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
        groups.setdefault(g, set()).add(n.op_type)
    assert "QLinearConv" not in groups[8] and groups[8] & {"Conv", "FusedConv", "NchwcConv"}, groups
    q = built.spec.input_quant.quantize(x).transpose(0, 2, 3, 1)
    y = built.spec.output_quant.dequantize(sess.run(None, {"input": np.ascontiguousarray(q)})[0])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert cosine_rows(y, ref).mean() > 0.98


@pytest.mark.parametrize(
    "cin, cout, groups, stride, bias",
    [(16, 16, 8, 1, False), (12, 4, 4, 2, True), (12, 24, 4, 1, True), (16, 32, 4, 2, False)],
)
def test_grouped_conv_as_depthwise_convs_is_exact_in_float(cin, cout, groups, stride, bias) -> None:
    """k input channels per group -> k depthwise convs (the channel each reads picked by a Gather) summed:
    the same function, for groups of 2-4 channels and any number of outputs per group."""
    from edgeface.converters.onnx_float import grouped_as_depthwise

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, cin, 1), nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=bias))
    proto = export_float_onnx(net.eval(), (20, 20))
    proto = onnx.shape_inference.infer_shapes(proto)
    graph, rewritten = grouped_as_depthwise(proto)
    assert len(rewritten) == 1
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Conv") == 1 + cin // groups and ops.count("Add") == cin // groups - 1
    for n in graph.graph.node[1:]:
        if n.op_type == "Conv":  # every term is depthwise: one input channel per output channel
            assert dict((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute)["group"] == cout
    x = np.random.default_rng(0).standard_normal((2, 3, 20, 20)).astype(np.float32)
    run = [
        ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
        for g in (proto, graph)
    ]
    a, b = (r.run(None, {r.get_inputs()[0].name: x})[0] for r in run)
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_grouped_conv_runs_integer_after_the_rewrite(tmp_path: Path) -> None:
    """With the rewrite (export._build_onnx applies it), mbf's grouped conv is no longer a float island:
    every conv of the integer graph is a QLinearConv in ORT, and the embedding follows PyTorch."""
    from edgeface.converters.onnx import grouped_convs
    from edgeface.converters.onnx_float import grouped_as_depthwise

    net = GroupedNet().eval()
    graph, rewritten = grouped_as_depthwise(prelu_as_max(export_float_onnx(net, SPEC.input_size)))
    assert rewritten and not grouped_convs(graph)
    x = _faces(32)
    stats = qdq.collect_stats(graph, qdq.quant_points(graph), [x])
    built = build_onnx(graph, SPEC, "int8", stats)
    assert "kept float" not in built.spec.weight_quant
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(built.proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "QLinearConv" in ops and not {"Conv", "FusedConv", "NchwcConv"} & set(ops), ops
    q = built.spec.input_quant.quantize(x).transpose(0, 2, 3, 1)
    y = built.spec.output_quant.dequantize(sess.run(None, {"input": np.ascontiguousarray(q)})[0])
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert cosine_rows(y, ref).mean() > 0.98


class DeadChannelNet(nn.Module):
    """Channel 3 of the first conv has all-zero weights and a bias (a pruned or dead filter): it outputs
    its bias everywhere, which the identity head passes to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
        with torch.no_grad():
            self.conv.weight[3] = 0.0
            self.conv.bias[3] = 0.7
            self.head[3].weight.copy_(torch.eye(8))
            self.head[3].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def test_a_dead_channel_keeps_its_bias_in_int8() -> None:
    net = DeadChannelNet().eval()
    spec = ModelSpec(name="dead", input_size=(32, 32), embedding_dim=8)
    proto = export_float_onnx(net, spec.input_size)
    x = _faces(40)
    stats = qdq.collect_stats(proto, qdq.quant_points(proto), [x[:32]])
    built = build_onnx(proto, spec, "int8", stats)
    held = x[32:]
    y = built.spec.output_quant.dequantize(
        _session(built.proto).run(
            None, {"input": built.spec.input_quant.quantize(held.transpose(0, 2, 3, 1))}
        )[0]
    )
    with torch.no_grad():
        ref = net(torch.from_numpy(held)).numpy()
    assert np.allclose(ref[:, 3], 0.7, atol=1e-6)
    assert np.abs(y[:, 3] - 0.7).max() < 0.05, y[:, 3]  # was ~0: the bias lost on a 1e-12 weight scale
    assert cosine_rows(y, ref).mean() > 0.98


def test_float_ops_say_why_a_grouped_conv_and_a_kept_layer_are_float() -> None:
    """The exporter keeps grouped (not depthwise) convs float itself; the report must not blame the user's
    --keep-float for them, and must name --keep-float for what the user asked."""
    from edgeface.converters.onnx import grouped_convs

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3)
            self.b = nn.Conv2d(8, 8, 3, groups=2)
            self.c = nn.Conv2d(8, 8, 3, groups=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.b(self.a(x))).mean((2, 3))

    proto = export_float_onnx(Net().eval(), (32, 32))
    grouped = grouped_convs(proto)
    plan = qdq.plan_graph(proto, [*grouped, "c"], (), {g: qdq.GROUPED_CONV_REASON for g in grouped})
    why = {name: reason for name, _, reason in plan.float_ops}
    assert grouped == ["/b/Conv"] and why["/b/Conv"] == qdq.GROUPED_CONV_REASON
    assert why["/c/Conv"] == "kept float by --keep-float"
