"""torch.nn's attention and transformer-encoder modules, written out for quantization, compute what
PyTorch's own forward (fused fast path included) computes, and expose their Linears to the graph."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import fx, nn

from edgeface.compress.quant.fakequant import QuantLinear
from edgeface.compress.quant.written_out import write_out


class _Call(nn.Module):
    """Holds the module under test, so that write_out can replace it (it replaces children)."""

    def __init__(self, inner: nn.Module, mode: str = "self") -> None:
        super().__init__()
        self.inner, self.mode = inner, mode

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "self":
            return self.inner(x, x, x)[0]
        if self.mode == "cross":
            return self.inner(x, kv, kv)[0]
        return self.inner(x)


def _same(module: nn.Module, mode: str, *args: torch.Tensor) -> fx.GraphModule:
    """Assert the written-out and the traced written-out module equal PyTorch's; return the trace."""
    torch.manual_seed(0)
    ref = _Call(module, mode).eval()
    mine = copy.deepcopy(ref)
    assert write_out(mine), "nothing was written out"
    gm = fx.symbolic_trace(mine)
    with torch.no_grad():
        want = ref(*args)
        for got in (mine(*args), gm(*args)):
            assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    return gm


def _linears(gm: fx.GraphModule) -> set[str]:
    return {
        str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), nn.Linear)
    }


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "module"])
def test_encoder_equals_pytorchs_and_its_linears_are_layers(norm_first: bool, activation: str) -> None:
    torch.manual_seed(0)
    act = nn.GELU() if activation == "module" else activation
    layer = nn.TransformerEncoderLayer(16, 4, 32, 0.1, act, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=False)
    gm = _same(encoder, "plain", torch.randn(3, 10, 16))
    per_layer = {"self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"}
    assert _linears(gm) == {f"inner.layers.{k}.{n}" for k in (0, 1) for n in per_layer}


def test_sequence_first_encoder_equals_pytorchs() -> None:
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32), 1, enable_nested_tensor=False)
    _same(encoder, "plain", torch.randn(10, 3, 16))  # [L, B, E]


def test_attention_variants_equal_pytorchs() -> None:
    x, kv = torch.randn(3, 10, 16), torch.randn(3, 7, 16)
    _same(nn.MultiheadAttention(16, 4, batch_first=True, bias=False), "self", x)
    # cross-attention with the packed projection: in_proj runs three times (shared weights)
    gm = _same(nn.MultiheadAttention(16, 4, batch_first=True), "cross", x, kv)
    assert sum(n.target == "inner.in_proj" for n in gm.graph.nodes) == 3
    # own key and value widths: separate projections
    mha = nn.MultiheadAttention(16, 4, batch_first=True, kdim=8, vdim=12)
    ref = mha.eval()
    mine = _Call(copy.deepcopy(mha), "cross")
    write_out(mine)
    k, v = torch.randn(3, 7, 8), torch.randn(3, 7, 12)
    with torch.no_grad():
        assert torch.allclose(mine.inner(x, k, v)[0], ref(x, k, v)[0], atol=1e-5)
    assert {"q_proj", "k_proj", "v_proj", "out_proj"} <= {n for n, _ in mine.inner.named_children()}


def test_masks_and_attention_weights_equal_pytorchs() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    mine = _Call(copy.deepcopy(mha))
    write_out(mine)
    x = torch.randn(3, 10, 16)
    causal = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
    padding = torch.zeros(3, 10, dtype=torch.bool)
    padding[:, -3:] = True
    per_head = torch.randn(3 * 4, 10, 10)
    with torch.no_grad():
        for kw in (
            {"attn_mask": causal, "key_padding_mask": padding},
            {"attn_mask": per_head},
            {"average_attn_weights": False},
            {},
        ):
            want, want_w = mha(x, x, x, **kw)
            got, got_w = mine.inner(x, x, x, **kw)
            assert torch.allclose(got, want, atol=1e-5) and torch.allclose(got_w, want_w, atol=1e-6), kw


def test_unsupported_attention_stays_opaque_and_training_mode_is_kept() -> None:
    model = _Call(nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True))
    assert write_out(model) == [] and type(model.inner) is nn.MultiheadAttention
    encoder = _Call(nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1))
    encoder.train()
    write_out(encoder)
    assert all(m.training for m in encoder.modules())  # QAT trains the written-out modules, dropout on


def test_quantized_encoder_has_integer_linears() -> None:
    """Through prepare and insert (what `edgeface quantize` runs): every Linear of the encoder is integer."""
    from edgeface.compress.quant.prepare import opaque_weight_modules
    from edgeface.compress.quant.ptq import quantize_structure
    from tests._awkward_models import tiny_face_transformer

    gm = quantize_structure(tiny_face_transformer(), "w8a8", input_shape=(3, 112, 112))
    layer = gm.get_submodule("encoder.layers.0")
    for name in ("self_attn.in_proj", "self_attn.out_proj", "linear1", "linear2"):
        assert isinstance(layer.get_submodule(name), QuantLinear), name
    assert opaque_weight_modules(gm) == []


class _MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.register_buffer("mask", torch.triu(torch.ones(10, 10, dtype=torch.bool), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, attn_mask=self.mask, need_weights=False)[0]


def test_a_mask_held_by_the_model_traces() -> None:
    """The mask's dtype and rank decide its additive form: that runs outside the trace (an fx leaf)."""
    torch.manual_seed(0)
    model = _MaskedAttention().eval()
    mine = copy.deepcopy(model)
    write_out(mine)
    gm = fx.symbolic_trace(mine)
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5)
