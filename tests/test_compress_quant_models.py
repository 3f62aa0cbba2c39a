"""Quantization of awkward user models: a CNN-transformer hybrid, a trained-like PReLU net at 112x96.

What broke on real models (issue 11): quantizers on `H * W` products of Python ints, bias correction
assuming channels on dim 1 for channels-last Linear layers, BN folding blind to the channel axis. These
tests run the real mechanisms on small models with those patterns (tests/_quant_models.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeface.compress.quant import prepare_float, ptq, quant_plan
from edgeface.compress.quant.fakequant import ActQuant, QuantLinear
from edgeface.compress.quant.graph import is_float_data
from edgeface.compress.quant.prepare import activation_quantizers
from edgeface.compress.quant.ptq import load_batches
from edgeface.data.folders import compression_images
from edgeface.models.loading import load_model

HYBRID = "tests._quant_models:tiny_hybrid"
PRELU = "tests._quant_models:prelu_net_112x96"


@pytest.fixture(scope="module")
def hybrid():
    return load_model(HYBRID)


@pytest.fixture(scope="module")
def calib(lfw: Path) -> list[Path]:
    return compression_images(lfw)[:48]


@pytest.fixture(scope="module")
def hybrid_q(hybrid, calib):
    """The hybrid after the default PTQ (MSE ranges, per-site smoothing, bias correction) on 32 faces."""
    return ptq(hybrid.model, hybrid.spec, calib[:32], calibration="mse", progress=False)


def _cos(a: nn.Module, b: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.cosine_similarity(a(x), b(x)) for x in batches])


def test_only_float_tensors_computed_from_the_input_are_quantized(hybrid) -> None:
    gm, place = prepare_float(hybrid.model, (3, 112, 112))
    assert place.points, "nothing to quantize"
    for p in place.points:
        assert is_float_data(p.end), p.name
    # B, C, H, W = x.shape and H * W: integers, never quantized, never integer ops
    int_nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target.__name__ == "mul"]
    shape_muls = [n for n in int_nodes if not is_float_data(n)]
    assert shape_muls, "the test model must multiply shapes"
    assert not {n.name for n in shape_muls} & set(place.int_ops)
    # every Linear runs in int8 with a quantized input; LayerNorm, GELU, softmax and attention stay float
    linears = [n for n, m in hybrid.model.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(place.layers) == sorted(linears)
    float_ops = {n: why for n, why in place.float_ops.items()}
    assert any("softmax" in n for n in float_ops) and any("matmul" in n for n in float_ops)
    assert any("act" in n for n in float_ops) and any("norm" in n for n in float_ops)


def test_every_quantizer_sees_float_tensors_and_every_linear_input_is_quantized(hybrid_q) -> None:
    q = hybrid_q
    seen: dict[str, torch.dtype] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, inp, n=n: seen.__setitem__(n, inp[0].dtype))
        for n, m in activation_quantizers(q).items()
    ]
    with torch.no_grad():
        q(torch.randn(3, 3, 112, 112))
    for h in hooks:
        h.remove()
    assert seen and all(d.is_floating_point for d in seen.values())
    plan = quant_plan(q)
    for name, layer in plan["layers"].items():
        assert layer["type"] == "linear" and layer["input"] is not None, name
        # channels-last: [N, HW, C] (attention), [N, H, W, C] (MLP), [N, C] (head)
        assert layer["channel_axis"] == layer["activation_rank"] - 1 and layer["activation_rank"] > 1, name
    assert plan["float_ops"], "the float ops are listed for exporters"


def test_layer_scale_is_folded_exactly(hybrid) -> None:
    gm, _ = prepare_float(hybrid.model, (3, 112, 112))
    assert not [k for k in gm.state_dict() if k.endswith("gamma") or k.endswith("gamma_xca")]
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref, out = hybrid.model(x), gm(x)
    assert (ref - out).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_smoothing_keeps_the_function_and_helps_with_layernorm_outliers(hybrid, hybrid_q, calib) -> None:
    from edgeface.compress.quant.smooth import smooth

    batches = load_batches(calib[:16], hybrid.spec)
    gm, place = prepare_float(hybrid.model, (3, 112, 112))
    done = smooth(gm, place, batches, alpha=0.5)
    assert "block1_norm" in done
    assert gm.get_submodule("block1.norm").weight[0].item() < 20.0  # the outlier channel was evened out
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        ref, out = hybrid.model(x), gm(x)
    assert (ref - out).abs().max().item() < 1e-3 * max(1.0, ref.abs().max().item())
    test = load_batches(calib[32:48], hybrid.spec)
    plain = ptq(hybrid.model, hybrid.spec, calib[:32], calibration="mse", progress=False, smooth=None)
    c_plain, c_smooth = _cos(hybrid.model, plain, test).mean(), _cos(hybrid.model, hybrid_q, test).mean()
    assert c_smooth > c_plain, (c_plain.item(), c_smooth.item())


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "mse"])
def test_hybrid_ptq_follows_fp32(hybrid, hybrid_q, calib, calibration: str) -> None:
    q = hybrid_q
    if calibration != "mse":
        q = ptq(hybrid.model, hybrid.spec, calib[:32], calibration=calibration, progress=False)
    cos = _cos(hybrid.model, q, load_batches(calib[32:48], hybrid.spec))
    assert cos.mean().item() > 0.99 and cos.mean().item() < 0.99999, cos.tolist()


def test_bias_correction_follows_the_channels_last_axis(hybrid, calib) -> None:
    """Per-channel mean error of a channels-last Linear shrinks with bias correction (it crashed before)."""
    batches = load_batches(calib[:32], hybrid.spec, batch_size=16)
    reference, _ = prepare_float(hybrid.model, (3, 112, 112))
    errors = {}
    for corrected in (False, True):
        q = ptq(
            hybrid.model, hybrid.spec, batches, calibration="minmax", progress=False, smooth=None,
            bias_correction=corrected,
        )  # fmt: skip
        outs: dict[str, list[torch.Tensor]] = {"q": [], "f": []}
        hq = q.get_submodule("block2.fc2").register_forward_hook(lambda m, i, o, d=outs: d["q"].append(o))
        hf = reference.get_submodule("block2.fc2").register_forward_hook(
            lambda m, i, o, d=outs: d["f"].append(o)
        )
        with torch.no_grad():
            for x in batches:
                q(x), reference(x)
        hq.remove(), hf.remove()
        diff = torch.cat(outs["q"]) - torch.cat(outs["f"])
        assert diff.shape[-1] == 32  # channels-last: (N, H, W, C)
        errors[corrected] = diff.mean(dim=(0, 1, 2)).abs().mean().item()
    assert errors[True] < errors[False], errors


def test_prelu_net_112x96_with_trained_slopes(calib, tmp_path: Path) -> None:
    from edgeface.cli.quantize_cmd import save_quantized

    fp32 = load_model(PRELU)
    slopes = torch.cat([m.weight for m in fp32.model.modules() if isinstance(m, nn.PReLU)])
    assert slopes.min() < -3 and slopes.max() > 2 and (slopes < 0).float().mean() > 0.4
    assert tuple(fp32.spec.input_size) == (112, 96)
    batches = load_batches(calib[:32], fp32.spec, batch_size=16)
    test = load_batches(calib[32:48], fp32.spec)
    assert test[0].shape[-2:] == (112, 96)
    q = ptq(fp32.model, fp32.spec, batches, calibration="mse", progress=False)
    cos = _cos(fp32.model, q, test)
    assert cos.mean().item() > 0.99 and cos.min().item() > 0.97, cos.tolist()
    plan = quant_plan(q)
    assert plan["layers"]["conv1.0"]["activation"] == "prelu"  # one range, after the PReLU
    assert plan["record"]["input_shape"] == [3, 112, 96]
    # x.size(0) feeds view: an integer, never quantized; the Linear behind the view is int8 with its input
    assert not [n for n in plan["quantizers"] if "size" in n]
    assert plan["layers"]["fc"]["input"] is not None
    out = tmp_path / "prelu_q.pt"
    save_quantized(out, q, fp32.spec, PRELU, None, plan)
    again = load_model(PRELU, out)
    with torch.no_grad():
        assert torch.equal(again.model(test[0]), q(test[0]))


def test_hybrid_checkpoint_reloads_with_weights_only(hybrid, hybrid_q, calib, tmp_path: Path) -> None:
    from edgeface.cli.quantize_cmd import save_quantized

    q = hybrid_q
    out = tmp_path / "hybrid_q.pt"
    save_quantized(out, q, hybrid.spec, HYBRID, None, quant_plan(q))
    raw = torch.load(out, weights_only=True)
    assert raw["transforms"][-1]["input_shape"] == [3, 112, 112]
    again = load_model(HYBRID, out)
    x = load_batches(calib[16:20], hybrid.spec)[0]
    with torch.no_grad():
        assert torch.equal(again.model(x), q(x))
    assert isinstance(again.model.get_submodule("block1.fc1"), QuantLinear)
    assert any(isinstance(m, ActQuant) for m in again.model.modules())
