"""insightface-style MobileFaceNet ("mbf" in arcface_torch): PReLU everywhere, 512-d embedding.

Parameter names follow arcface_torch's mobilefacenet.py so its checkpoints load. PReLU is what makes this
network the hard case for int8 deployment: common runtimes keep PReLU in float.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """Expand (1x1), depthwise 3x3, project (1x1, linear); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, residual: bool, stride: int, hidden: int) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, padding=1, groups=hidden),
            LinearBlock(hidden, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, channels: int, repeats: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, True, 1, hidden) for _ in range(repeats)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    def __init__(self, embedding_dim: int, kernel: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=kernel, groups=512),
            nn.Flatten(),
            nn.Linear(512, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MBF(nn.Module):
    def __init__(
        self,
        embedding_dim: int = 512,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 2,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        c64, c128 = 64 * scale, 128 * scale
        layers: list[nn.Module] = [ConvBlock(3, c64, kernel=3, stride=2, padding=1)]
        if blocks[0] == 1:
            layers.append(ConvBlock(c64, c64, kernel=3, padding=1, groups=64))
        else:
            layers.append(Residual(c64, blocks[0], 128))
        layers += [
            DepthWise(c64, c64, False, 2, 128),
            Residual(c64, blocks[1], 128),
            DepthWise(c64, c128, False, 2, 256),
            Residual(c128, blocks[2], 256),
            DepthWise(c128, c128, False, 2, 512),
            Residual(c128, blocks[3], 256),
        ]
        self.layers = nn.ModuleList(layers)
        self.conv_sep = ConvBlock(c128, 512)
        self.features = GDC(embedding_dim, input_size // 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))
