"""MobileFaceNet as in the public foamliu/MobileFaceNet repository (MS1M, ArcFace, 128-d, ReLU6).

Parameter names follow that repository so its checkpoints (../shared/models/mobilefacenet_ms1m.pt) load with
strict=True. The layout was read off the checkpoint's keys and the reference ONNX graph: an inverted-residual
body (MobileNetV2 blocks), a 7x7 global depthwise conv instead of pooling, and BN on the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion, out_channels, repeats, first_stride) for each stage of the body.
BODY = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.depthwise(x)))
        return self.relu(self.bn2(self.pointwise(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            ConvBNReLU(cin, hidden, kernel=1),
            ConvBNReLU(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class GlobalDepthwise(nn.Module):
    """A 7x7 depthwise conv that keeps per-position weights where average pooling would blur them."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class MobileFaceNet(nn.Module):
    def __init__(self, embedding_dim: int = 128, input_size: int = 112) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(3, 64, kernel=3, stride=2)
        self.dw_conv = DepthwiseSeparable(64, 64)
        blocks: list[nn.Module] = []
        cin = 64
        for expansion, cout, repeats, stride in BODY:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.conv2 = ConvBNReLU(cin, 512, kernel=1)
        self.gdconv = GlobalDepthwise(512, input_size // 16)
        self.conv3 = nn.Conv2d(512, embedding_dim, 1)
        self.bn = nn.BatchNorm2d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        x = self.gdconv(self.conv2(x))
        return torch.flatten(self.bn(self.conv3(x)), 1)
