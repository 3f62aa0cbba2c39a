"""PReLU with trained-like slopes (negative and above 1) for TFLite: torch_rewrite.prelu_as_max negates and
range-equalizes channels around every PReLU whose neighbours allow it, exactly in float, and falls back per
layer to the exact forms; the int8 graph keeps x, a*x and the MAXIMUM on one grid spanning both ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from edgeface.converters import tflite_learned as tl
from edgeface.converters.torch_rewrite import prelu_as_max
from torch import nn

from tests._awkward_models import trained_like_slopes

LFW = Path(__file__).parents[1].parent / "shared" / "data" / "lfw"


class Neighbourhoods(nn.Module):
    """One PReLU per case: a BatchNorm2d producer with a dense and a BatchNorm2d reader (iresnet's stem), a
    Conv2d producer (with bias) and a depthwise reader, a grouped reader, and two that must fall back: one
    read by a residual ADD, one whose producer is read twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv0 = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.act0 = nn.PReLU(16)  # BN producer; readers: BatchNorm2d and a dense conv
        self.bn_read = nn.BatchNorm2d(16)
        self.conv_read = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.pw = nn.Conv2d(16, 32, 1, bias=True)
        self.act1 = nn.PReLU(32)  # Conv producer; depthwise reader
        self.dw = nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=True)
        self.bn2 = nn.BatchNorm2d(32)
        self.act2 = nn.PReLU(32)  # BN producer; grouped reader (4 channels per group)
        self.grouped = nn.Conv2d(32, 32, 3, 1, 1, groups=8, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.act3 = nn.PReLU(32)  # falls back: its output is also read by the residual ADD
        self.conv4 = nn.Conv2d(32, 32, 1, bias=False)
        self.act4 = nn.PReLU(32)  # falls back: its producer is read by the ADD too
        self.head = nn.Conv2d(32, 32, 28, groups=32, bias=False)  # global depthwise, as in GDC
        self.fc = nn.Linear(32, 16)
        for k, m in enumerate(m for m in self.modules() if isinstance(m, nn.PReLU)):
            m.weight.data.copy_(trained_like_slopes(m.weight.numel(), k))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # trained-like statistics, not the identity init
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)
        with torch.no_grad():
            self.pw.weight[5].zero_()  # a dead channel: nothing reaches channel 5 of act1
            self.pw.bias[5] = 0.0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act0(self.bn0(self.conv0(x)))
        y = self.bn_read(y) + self.conv_read(y)
        y = self.act2(self.bn2(self.dw(self.act1(self.pw(y)))))
        y = self.bn3(self.grouped(y))
        y = self.act3(y) + y  # act3's producer (bn3) is read by the ADD as well
        z = self.conv4(y)
        y = self.act4(z) + z
        return self.fc(torch.flatten(self.head(y), 1))


class Untraceable(Neighbourhoods):
    """Control flow on a value: torch.fx cannot trace it, so every layer keeps the form its slopes allow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.mean()) > 1e9:
            x = -x
        return super().forward(x)


def _faces(n: int) -> np.ndarray:
    """n aligned LFW faces as the net's NCHW float input (real images: realistic activation ranges)."""
    import cv2

    paths = sorted((LFW / "aligned112").rglob("*.jpg"))[:n]
    x = np.stack([cv2.resize(cv2.imread(str(p))[:, :, ::-1], (112, 112)) for p in paths])
    return ((x.astype(np.float32) / 127.5) - 1.0).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return _faces(24)


def _prelu_kinds(net: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in net.named_modules() if "PReLU" in type(m).__name__}


def test_sites_flip_and_equalize_exactly(faces: np.ndarray) -> None:
    net = Neighbourhoods()
    slopes = {n: m.weight.detach() for n, m in net.named_modules() if isinstance(m, nn.PReLU)}
    assert all(float(s.min()) < 0 and float(s.max()) > 1 for s in slopes.values())  # every case flips
    out, rep = prelu_as_max(net, [faces[:16]])
    assert sorted(rep.flipped) == ["act0", "act1", "act2"]
    assert sorted(rep.equalized) == ["act0", "act1", "act2"]
    kinds = _prelu_kinds(out)
    assert [kinds[f"act{k}"] for k in range(5)] == ["MaxPReLU"] * 3 + ["AffineReluPReLU"] * 2
    assert rep.rewritten == 5 and rep.max_form == 3
    assert isinstance(net.act0, nn.PReLU)  # the input module is not modified
    x = torch.from_numpy(faces[16:])
    with torch.no_grad():
        ref, got = net(x), out(x)
        assert (got - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
        # equalization made act1's channels alike: the span each needs on the shared grid (its input's and
        # output's range, and 0) over its widest and narrowest live channel
        spread = []
        for m in (net, out):
            seen: list[torch.Tensor] = []
            h = m.act1.register_forward_hook(lambda _m, a, y, seen=seen: seen.extend((a[0], y)))
            m(x)
            h.remove()
            v = torch.cat([t.transpose(0, 1).reshape(32, -1) for t in seen], 1)
            w = (v.max(1).values.clamp(min=0) - v.min(1).values.clamp(max=0)).numpy()
            assert w[5] == 0.0  # the dead channel stays dead, and finite
            live = np.delete(w, 5)
            spread.append(live.max() / live.min())
        assert spread[1] < min(2.0, spread[0] / 2), spread


def test_without_calibration_only_flips_and_without_flip_keeps_forms(faces: np.ndarray) -> None:
    net = Neighbourhoods()
    x = torch.from_numpy(faces[:4])
    flipped, rep = prelu_as_max(net)
    assert rep.equalized == [] and sorted(rep.flipped) == ["act0", "act1", "act2"]
    plain, rep2 = prelu_as_max(net, [faces[:8]], flip=False)  # a learned checkpoint's grids
    assert rep2.flipped == [] and rep2.equalized == [] and rep2.max_form == 0
    assert set(_prelu_kinds(plain).values()) == {"AffineReluPReLU"}
    with torch.no_grad():
        ref = net(x)
        for m in (flipped, plain):
            assert (m(x) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_untraceable_module_falls_back_per_layer(faces: np.ndarray) -> None:
    net = Untraceable()
    out, rep = prelu_as_max(net, [faces[:8]])
    assert rep.flipped == [] and rep.equalized == [] and rep.rewritten == 5
    assert set(_prelu_kinds(out).values()) == {"AffineReluPReLU"}  # every layer has a slope outside [0, 1]
    x = torch.from_numpy(faces[8:12])
    with torch.no_grad():
        ref = net(x)
        assert (out(x) - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_int8_tflite_keeps_prelu_max_on_one_grid(faces: np.ndarray) -> None:
    """The quantized graph: every PReLU MAXIMUM reads x and a*x on its own output grid, which covers the
    calibrated range of the PReLU's output (a = -4 maps x's negative side four times further), and the
    int8 embedding agrees with the float module."""
    from edgeface.converters.tflite import _FLOAT_CACHE, activation_stats, build_tflite

    from edgeface.spec import ModelSpec

    net = Neighbourhoods()
    spec = ModelSpec(name="neighbourhoods", input_size=(112, 112), embedding_dim=16)
    nhwc = faces[:16].transpose(0, 2, 3, 1).copy()
    _FLOAT_CACHE.clear()
    try:
        data, _, info = build_tflite(net, spec, "int8", [nhwc])
        float_data = _FLOAT_CACHE["data"]
    finally:
        _FLOAT_CACHE.clear()
    assert info["prelu_layers_equalized"] == 3
    stats, _ = activation_stats(float_data, [nhwc])
    model = tl.read(data)
    graph = model.subgraphs[0]
    producer = {int(op.outputs[0]): op for op in graph.operators}
    maxes = [op for op in graph.operators if tl.op_name(model, op) == "MAXIMUM"]
    assert len(maxes) == 3
    widened = 0  # layers whose output reaches beyond x's range, so that x's own grid would clip it
    for op in maxes:
        ts = [graph.tensors[i] for i in (*op.inputs, *op.outputs)]
        grids = {(float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])) for t in ts}
        assert len(grids) == 1, grids
        scale, zp = grids.pop()
        lo, hi = scale * (-128 - zp), scale * (127 - zp)
        a, b = (int(i) for i in op.inputs)
        x = a if int(producer[b].inputs[0]) == a else b  # the other input is the slope conv of x
        names = [tl.tensor_name(graph.tensors[i]) for i in (x, int(op.outputs[0]))]
        want_lo = min(stats.range(n, "mse", 8)[0] for n in names)
        want_hi = max(stats.range(n, "mse", 8)[1] for n in names)
        assert lo <= want_lo + scale and hi >= want_hi - scale, (lo, hi, want_lo, want_hi)
        x_lo, x_hi = stats.range(names[0], "mse", 8)
        widened += want_hi > x_hi + scale or want_lo < x_lo - scale
    assert widened >= 1
    # XNNPACK's delegate takes MAXIMUM and a RELU of its own (the fallback layers' exact form) only in float:
    # LiteRT runs the int8 ones itself, and the export names them when the artifact is not faster than fp32
    from edgeface.converters.tflite import inspect_tflite

    outside = inspect_tflite(data)["outside_delegate"]
    assert outside.count("MAXIMUM") == 3 and set(outside) == {"MAXIMUM", "RELU"}, outside
    assert inspect_tflite(float_data)["outside_delegate"] == []
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = outp["quantization"]
    probe = faces[16:]
    with torch.no_grad():
        ref = net(torch.from_numpy(probe)).numpy()
    cos = []
    for k, img in enumerate(probe.transpose(0, 2, 3, 1)):
        interp.set_tensor(inp["index"], np.clip(np.round(img / s_in + z_in), -128, 127)[None].astype(np.int8))
        interp.invoke()
        e = (interp.get_tensor(outp["index"]).astype(np.float32) - z_out).reshape(-1) * s_out
        cos.append(float(e @ ref[k] / np.linalg.norm(e) / np.linalg.norm(ref[k])))
    assert np.mean(cos) > 0.99, cos
