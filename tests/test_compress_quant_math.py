"""Fake-quant arithmetic and BatchNorm folding, checked numerically (no images needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeface.compress.quant import fold_bn, model_size_bytes, prepare_float
from edgeface.compress.quant.fakequant import (
    ActQuant,
    QuantLinear,
    affine_qparams,
    fake_quant_weight,
    weight_scale_maxabs,
    weight_scale_mse,
)
from edgeface.compress.quant.fold import unfolded_batchnorms
from edgeface.compress.quant.prepare import insert_quantizers, resolve_bits
from edgeface.errors import EdgefaceError
from edgeface.models.registry import build_model


def _randomize_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def test_int6_weights_land_on_the_6bit_grid_per_channel() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.1, 3.0, 8)[:, None, None, None]
    scale = weight_scale_maxabs(w, 6)
    assert torch.allclose(scale, w.abs().amax(dim=(1, 2, 3)) / 31)  # one scale per output channel
    q = fake_quant_weight(w, scale, 6) / scale[:, None, None, None]
    assert torch.allclose(q, q.round(), atol=1e-4)
    assert q.min() >= -31 and q.max() <= 31
    assert len(torch.unique(q.round())) <= 63
    # MSE clipping may shrink the range, never widen it, and lowers the error
    mse = weight_scale_mse(w, 6)
    assert torch.all(mse <= scale + 1e-9)
    err = lambda s: (fake_quant_weight(w, s, 6) - w).pow(2).sum()  # noqa: E731
    assert err(mse) <= err(scale) + 1e-9


def test_activation_grid_keeps_zero_exact_and_ste_passes_gradients_inside_the_range() -> None:
    scale, zp = affine_qparams(0.0, 6.0, 6)
    assert zp == -32 and scale == pytest.approx(6 / 63)
    aq = ActQuant(6)
    aq.set_range(-1.0, 3.0)
    x = torch.tensor([-5.0, -1.0, 0.0, 0.4, 2.9, 10.0], requires_grad=True)
    y = aq(x)
    assert y[2].item() == 0.0
    steps = (y.detach() / aq.scale).round()
    assert torch.allclose(y.detach() / aq.scale, steps, atol=1e-4)
    y.sum().backward()
    # straight-through: gradient 1 inside [lo, hi], 0 where the value was clipped
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_weight_ste_gradient_reaches_float_weights() -> None:
    layer = QuantLinear.from_float(nn.Linear(5, 3), 6)
    layer.train()
    layer(torch.randn(4, 5)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name", ["mobilefacenet", "iresnet18", "mbf", "tests._user_model_quant:small_face_net"]
)
def test_fold_bn_matches_the_unfolded_model(name: str) -> None:
    model = _randomize_bn(build_model(name)[0])
    folded = fold_bn(model)
    assert unfolded_batchnorms(folded) == []
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (ref - out).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_iresnet_bn_before_conv_becomes_explicit_affine_and_bn1d_folds() -> None:
    model = _randomize_bn(build_model("iresnet18")[0])
    folded = fold_bn(model)
    bn1 = folded.get_submodule("layer1.0.bn1")  # BN before a zero-padded conv: kept, as a 1x1 depthwise conv
    assert isinstance(bn1, nn.Conv2d) and bn1.groups == 64 and bn1.kernel_size == (1, 1)
    names = dict(folded.named_modules())
    assert "features" not in names and "bn2" not in names  # BN1d after fc and BN2d before flatten -> fc
    assert folded.get_submodule("fc").bias is not None


def test_size_counts_int6_packed() -> None:
    gm, place = prepare_float(nn.Sequential(nn.Linear(64, 32)), (64,))
    insert_quantizers(gm, place, resolve_bits(place, "w6a6", keep_ends_8bit=False))
    # 64*32 weights at 6 bits + 32 bias + 32 scales at 32 bits + 2 activation quantizers (input, output)
    assert model_size_bytes(gm) == 64 * 32 * 6 // 8 + 32 * 4 + 32 * 4 + 2 * 8


def test_unsupported_bits_are_user_errors() -> None:
    _, place = prepare_float(nn.Sequential(nn.Linear(4, 2)), (4,))
    with pytest.raises(EdgefaceError, match="unsupported"):
        resolve_bits(place, "w3a3")
    with pytest.raises(EdgefaceError, match="no quantizable layer"):
        resolve_bits(place, "w8a8", {"nope": 8})


def test_layer_bits_by_layer_class_with_a_named_layer_winning() -> None:
    """`--layer-bits Linear=7` sets every Linear (e.g. the layers ONNX Runtime runs as GEMMs on the 7-bit
    grid) and leaves convs alone; a layer's own entry wins over its class's in either order."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.Linear(16, 4)
    )
    _, place = prepare_float(model, (3, 8, 8))
    assert place.kinds == {"0": "Conv2d", "3": "Linear", "4": "Linear"}
    for overrides in ({"Linear": 7, "4": 8}, {"4": 8, "Linear": 7}):
        weights = resolve_bits(place, "w8a8", overrides)["weights"]
        assert weights == {"0": 8, "3": 7, "4": 8}, (overrides, weights)
    assert resolve_bits(place, "w8a8", {"Conv2d": 6})["weights"] == {"0": 6, "3": 8, "4": 8}
    with pytest.raises(EdgefaceError, match="or a layer class: Conv2d, Linear"):
        resolve_bits(place, "w8a8", {"BatchNorm2d": 8})
