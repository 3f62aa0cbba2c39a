"""Fake-quantization modules: float tensors rounded onto an integer grid, with a straight-through gradient.

Everything is emulated in float32 with `torch.fake_quantize_per_*_affine`, whose backward is the
straight-through estimator (gradient passes inside the clipping range, zero outside). That one code path
serves PTQ evaluation, QAT and the export of scales, and bit widths below 8 (int6) are just a narrower grid:
the values are what an int6 kernel would see, stored in int8.

Conventions (what an int8 runtime such as TFLite or onnxruntime QDQ expects):
- weights: symmetric, per output channel (axis 0), zero point 0, narrow range [-(2^(b-1)-1), 2^(b-1)-1];
- activations: affine, per tensor, full signed range [-2^(b-1), 2^(b-1)-1], zero point chosen so that 0.0
  is exactly representable (padding and ReLU outputs stay exact).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeface.errors import EdgefaceError

SUPPORTED_BITS = (4, 5, 6, 7, 8)


def check_bits(bits: int, what: str = "bits") -> int:
    if int(bits) != bits or int(bits) not in SUPPORTED_BITS:
        raise EdgefaceError(
            f"unsupported {what} {bits!r}: choose one of {', '.join(map(str, SUPPORTED_BITS))}"
        )
    return int(bits)


def weight_range(bits: int) -> tuple[int, int]:
    q = 2 ** (bits - 1) - 1
    return -q, q


def act_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def affine_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point covering [lo, hi] (widened to include 0) on the signed `bits` grid."""
    qmin, qmax = act_range(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / (qmax - qmin), 1e-8)
    zero_point = int(round(qmin - lo / scale))
    return scale, max(qmin, min(qmax, zero_point))


def fake_quant_weight(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    qmin, qmax = weight_range(bits)
    zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale.to(w.dtype), zp, 0, qmin, qmax)


def weight_scale_maxabs(w: Tensor, bits: int) -> Tensor:
    m = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    return torch.clamp(m / weight_range(bits)[1], min=1e-8)


def weight_scale_mse(w: Tensor, bits: int, grid: int = 40, lowest: float = 0.5) -> Tensor:
    """Per-channel clipping factor in [lowest, 1] x max|w| minimising the rounding + clipping error.

    Matters at 6 bits, where one outlier weight otherwise stretches the grid for the whole channel.
    """
    flat = w.detach().reshape(w.shape[0], -1).float()
    base = weight_scale_maxabs(flat, bits)
    qmin, qmax = weight_range(bits)
    best_err = torch.full_like(base, float("inf"))
    best = base.clone()
    for a in torch.linspace(1.0, lowest, grid).tolist():
        s = base * a
        q = torch.clamp(torch.round(flat / s[:, None]), qmin, qmax) * s[:, None]
        err = (q - flat).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best


class _WeightQuantMixin:
    """An int-grid view of `weight`: per-channel scales in a buffer, refreshed from the weights in QAT."""

    weight: Tensor
    weight_scale: Tensor
    weight_bits: int
    quant_enabled: bool

    def _init_quant(self, bits: int) -> None:
        self.weight_bits = check_bits(bits, "weight bits")
        self.quant_enabled = True
        self.register_buffer("weight_scale", weight_scale_maxabs(self.weight, self.weight_bits))  # type: ignore[attr-defined]

    def refresh_weight_scale(self, method: str = "minmax") -> None:
        fn = weight_scale_mse if method == "mse" else weight_scale_maxabs
        with torch.no_grad():
            self.weight_scale.copy_(fn(self.weight, self.weight_bits))

    def quantized_weight(self) -> Tensor:
        if not self.quant_enabled:
            return self.weight
        if self.training:  # QAT: the weights move, so their range does too
            self.refresh_weight_scale()
            return fake_quant_weight(self.weight, self.weight_scale, self.weight_bits)
        # eval: the grid only changes when the weights or scales are written (tensor versions), so the
        # rounded weights are kept between forward passes (calibration and evaluation run many)
        key = (self.weight._version, self.weight_scale._version, self.weight.data_ptr(), self.weight_bits)
        cached = getattr(self, "_wq_cache", None)
        if cached is None or cached[0] != key or torch.is_grad_enabled():
            if torch.is_grad_enabled():
                return fake_quant_weight(self.weight, self.weight_scale, self.weight_bits)
            cached = (key, fake_quant_weight(self.weight, self.weight_scale, self.weight_bits))
            self._wq_cache = cached
        return cached[1]


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int) -> QuantConv2d:
        q = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
        )
        q.weight = conv.weight
        q.bias = conv.bias
        q._init_quant(bits)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)


class QuantLinear(_WeightQuantMixin, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int) -> QuantLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.weight = linear.weight
        q.bias = linear.bias
        q._init_quant(bits)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)


class ActQuant(nn.Module):
    """Per-tensor affine fake quantizer of one activation, with the statistics calibration needs.

    Modes (plain attributes, not state): `enabled` rounds onto the grid; `observe` = "minmax" records the
    running range, "hist" also a histogram over it (for percentile / MSE calibration), in the same pass.
    """

    HIST_BINS = 2048

    def __init__(self, bits: int = 8) -> None:
        super().__init__()
        self.bits = check_bits(bits, "activation bits")
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self.enabled = True
        self.observe: str | None = None
        self.label = ""  # quantizer name, for error messages
        self.producer = ""  # table key of the op whose output this rounds
        self.reset_stats()

    def reset_stats(self) -> None:
        self.min_val = float("inf")
        self.max_val = float("-inf")
        self.hist: Tensor | None = None
        self.hist_range = (0.0, 0.0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={float(self.scale):.3g}, zero_point={int(self.zero_point)}"

    def set_range(self, lo: float, hi: float) -> None:
        scale, zp = affine_qparams(lo, hi, self.bits)
        self.scale.fill_(scale)
        self.zero_point.fill_(zp)

    def qrange(self) -> tuple[int, int]:
        return act_range(self.bits)

    def forward(self, x: Tensor) -> Tensor:
        if not (isinstance(x, Tensor) and x.is_floating_point()):
            from edgeface.errors import ModelError

            raise ModelError(
                f"activation quantizer {self.label or '?'} received {type(x).__name__} "
                f"{getattr(x, 'dtype', '')} instead of a float tensor (the graph changed between the "
                f"analysis pass and this run); try --keep-float on the op that produces it "
                f"({self.producer or '?'})"
            )
        if self.observe is not None:
            self._record(x.detach())
        if not self.enabled:
            return x
        qmin, qmax = act_range(self.bits)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)

    def _record(self, x: Tensor) -> None:
        """min/max always; with observe == "hist" also a histogram, re-binned as the range grows."""
        lo, hi = float(x.min()), float(x.max())
        self.min_val, self.max_val = min(self.min_val, lo), max(self.max_val, hi)
        if self.observe != "hist":
            return
        lo, hi = min(self.min_val, 0.0), max(self.max_val, 0.0)
        hi = hi if hi > lo else lo + 1e-6
        if self.hist is not None and (lo < self.hist_range[0] or hi > self.hist_range[1]):
            old_lo, old_hi = self.hist_range
            centers = (
                old_lo
                + (torch.arange(self.HIST_BINS, dtype=torch.float64) + 0.5)
                * (old_hi - old_lo)
                / self.HIST_BINS
            )
            idx = ((centers - lo) / (hi - lo) * self.HIST_BINS).long().clamp(0, self.HIST_BINS - 1)
            self.hist = torch.zeros(self.HIST_BINS, dtype=torch.float64).index_add_(0, idx, self.hist)
        if self.hist is None:
            self.hist = torch.zeros(self.HIST_BINS, dtype=torch.float64)
        self.hist_range = (lo, hi)
        self.hist += torch.histc(x.float(), bins=self.HIST_BINS, min=lo, max=hi).double()
