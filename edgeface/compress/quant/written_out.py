"""nn.MultiheadAttention and nn.TransformerEncoder(Layer) as written-out forwards quantization can enter.

torch.fx traces torch.nn's own modules as leaves, so a Face-Transformer-style ViT built from them reached
quantization as one opaque call per encoder: its projections and feed-forward Linears kept float weights,
and the exporters, which meet every one of those Linears in the ONNX / TFLite graph, could not carry the
checkpoint's scales over. Before tracing, `write_out` swaps each such module (exact class only: a subclass
may have changed forward) for a module that computes the same function with plain ops (Linear, matmul,
softmax, LayerNorm) and keeps the original children under their names, so each Linear is an ordinary
quantizable layer. MultiheadAttention's packed `in_proj_weight` becomes the Linear `in_proj` (separate
`q_proj` / `k_proj` / `v_proj` when key or value have their own widths); a configuration not written out
here (add_bias_kv, add_zero_attn) stays the opaque module, and quantize's warning names it.

The written-out forward equals PyTorch's (fused fast path included) to float rounding (tested); dropout
is an nn.Dropout child, so QAT's training mode still applies it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn


def _attention_bias(attn_mask: Any, key_padding_mask: Any, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of MultiheadAttention's masks, broadcastable to [batch, heads, L, S]: a boolean
    mask marks positions to drop (True), a float mask is added as it is. Outside the traced graph (an fx
    leaf), because it branches on dtypes and ranks."""

    def additive(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        return mask.to(dtype)

    bias = torch.zeros((), dtype=dtype)
    if attn_mask is not None:
        m = additive(attn_mask)
        bias = bias + (m.reshape(-1, heads, *m.shape[-2:]) if m.dim() == 3 else m)
    if key_padding_mask is not None:
        bias = bias + additive(key_padding_mask)[:, None, None, :]
    return bias


fx.wrap("_attention_bias")


def _linear_like(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


class WrittenOutAttention(nn.Module):
    """nn.MultiheadAttention's forward with its input projections as nn.Linear layers."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        e = mha.embed_dim
        self.heads, self.batch_first = mha.num_heads, mha.batch_first
        self.scale = 1.0 / math.sqrt(mha.head_dim)
        b = mha.in_proj_bias
        if mha._qkv_same_embed_dim:
            self.in_proj = _linear_like(mha.in_proj_weight, b)
        else:
            for k, (name, w) in enumerate(
                (("q_proj", mha.q_proj_weight), ("k_proj", mha.k_proj_weight), ("v_proj", mha.v_proj_weight))
            ):
                setattr(self, name, _linear_like(w, None if b is None else b[k * e : (k + 1) * e]))
        self.packed = mha._qkv_same_embed_dim
        self.attn_drop = nn.Dropout(mha.dropout)
        self.out_proj = mha.out_proj
        self.embed_dim = e

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[Any, Any, Any]:
        if not self.packed:
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if query is key and key is value:  # self-attention: one projection, as PyTorch computes it
            return self.in_proj(query).chunk(3, dim=-1)
        e = self.embed_dim
        return (
            self.in_proj(query)[..., :e],
            self.in_proj(key)[..., e : 2 * e],
            self.in_proj(value)[..., 2 * e :],
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = (
                (query.transpose(0, 1),) * 3
                if query is key and key is value
                else (query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1))
            )
        q, k, v = self._project(query, key, value)
        b = q.shape[0]
        q = q.reshape(b, q.shape[1], self.heads, -1).transpose(1, 2)  # [B, H, L, D]
        k = k.reshape(b, k.shape[1], self.heads, -1).transpose(1, 2)
        v = v.reshape(b, v.shape[1], self.heads, -1).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if attn_mask is not None or key_padding_mask is not None:
            attn = attn + _attention_bias(attn_mask, key_padding_mask, self.heads, attn.dtype)
        attn = attn.softmax(dim=-1)
        out = (self.attn_drop(attn) @ v).transpose(1, 2)
        out = self.out_proj(out.reshape(b, out.shape[1], self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


class WrittenOutEncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer's forward (post- or pre-norm) without its fused fast path."""

    def __init__(self, layer: nn.TransformerEncoderLayer) -> None:
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        self.norm_first = layer.norm_first
        if not isinstance(layer.activation, nn.Module):
            self.activation = layer.activation  # F.relu / F.gelu or the user's callable

    def _sa(self, x: torch.Tensor, mask: Any, padding: Any) -> torch.Tensor:
        out = self.self_attn(x, x, x, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]
        return self.dropout1(out)

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa(self.norm1(x), src_mask, src_key_padding_mask)
            return x + self._ff(self.norm2(x))
        x = self.norm1(x + self._sa(x, src_mask, src_key_padding_mask))
        return self.norm2(x + self._ff(x))


class WrittenOutEncoder(nn.Module):
    """nn.TransformerEncoder's forward: its layers in turn, then its optional norm."""

    def __init__(self, encoder: nn.TransformerEncoder) -> None:
        super().__init__()
        self.layers = encoder.layers
        self.norm = encoder.norm

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
        return x if self.norm is None else self.norm(x)


def _written_out(module: nn.Module) -> nn.Module | None:
    kind = type(module)
    if kind is nn.MultiheadAttention:
        if module.bias_k is not None or module.add_zero_attn:
            return None
        return WrittenOutAttention(module)
    if kind is nn.TransformerEncoderLayer:
        return WrittenOutEncoderLayer(module)
    if kind is nn.TransformerEncoder:
        return WrittenOutEncoder(module)
    return None


def write_out(model: nn.Module) -> list[str]:
    """Replace, in place and innermost first, every module above by its written-out form; the names of
    the replaced modules. The model computes the same function afterwards."""
    done: list[str] = []
    new_of: dict[int, nn.Module | None] = {}  # a module shared under two names gets one replacement
    for name, module in reversed(list(model.named_modules(remove_duplicate=False))):
        if not name:
            continue
        if id(module) not in new_of:
            new_of[id(module)] = _written_out(module)
            if new_of[id(module)] is not None:
                new_of[id(module)].train(module.training)  # type: ignore[union-attr]
        new = new_of[id(module)]
        if new is None:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        done.append(name)
    return done
