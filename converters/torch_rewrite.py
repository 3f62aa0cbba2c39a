"""Module-level rewrites applied before litert-torch conversion, exact in float, chosen for int8 speed.

litert-torch lowers `nn.PReLU` to RELU/MUL/SUB chains; XNNPACK has no int8 PRELU, so in an int8 graph those
become several elementwise passes and delegate partition breaks around every activation. PReLU(x) =
max(x, a*x) holds exactly for slopes in [0, 1]; written as a 1x1 depthwise conv (the slopes become
per-channel int8 weights) and a MAXIMUM. XNNPACK runs the conv; it delegates MAXIMUM only in float, so the
int8 MAXIMUM runs as LiteRT's own kernel between two delegate partitions, and still int8 iresnet18 runs
3.91x faster than fp32 (docs/speed.md). This is the TFLite counterpart of `onnx_float.prelu_as_max`.
(a*x + relu((1-a)*x) stays in one partition but its int8 ADD makes it slower: benchmarks/prelu_tflite.py.)
"""

from __future__ import annotations

import copy
from typing import Any


def _max_prelu(prelu: Any) -> Any:
    import torch
    from torch import nn

    class MaxPReLU(nn.Module):
        """max(x, slope_c * x), the slope as a bias-free 1x1 depthwise conv."""

        def __init__(self, slopes: torch.Tensor) -> None:
            super().__init__()
            c = slopes.numel()
            self.slope = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.slope.weight.data.copy_(slopes.detach().reshape(c, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.maximum(x, self.slope(x))

    return MaxPReLU(prelu.weight)


def _any_slope_prelu(prelu: Any) -> Any:
    import torch
    from torch import nn

    class AffineReluPReLU(nn.Module):
        """a*x + (1 - a)*relu(x), exact for every slope: two bias-free 1x1 depthwise convs, a RELU and an
        ADD, all of which XNNPACK runs in int8 in one partition."""

        def __init__(self, slopes: torch.Tensor) -> None:
            super().__init__()
            c = slopes.numel()
            self.slope = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.rest = nn.Conv2d(c, c, 1, groups=c, bias=False)
            self.slope.weight.data.copy_(slopes.detach().reshape(c, 1, 1, 1))
            self.rest.weight.data.copy_(1.0 - slopes.detach().reshape(c, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.slope(x) + self.rest(torch.relu(x))

    return AffineReluPReLU(prelu.weight)


def prelu_as_max(net: Any) -> tuple[Any, int]:
    """(copy of `net` with every per-channel PReLU rewritten, number rewritten).

    Slopes all in [0, 1]: max(x, a*x). Any other slope (trained PReLUs reach about -4 and +2.2, where
    max(x, a*x) is not PReLU): a*x + (1 - a)*relu(x). Single-slope PReLUs are left alone. The input module
    is not modified.
    """
    from torch import nn

    out = copy.deepcopy(net).eval()
    count = 0
    for module in list(out.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.PReLU) or child.weight.numel() < 2:
                continue
            w = child.weight.detach()
            exact_max = float(w.min()) >= 0.0 and float(w.max()) <= 1.0
            setattr(module, child_name, _max_prelu(child) if exact_max else _any_slope_prelu(child))
            count += 1
    return out, count
