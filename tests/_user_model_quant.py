"""A user's own model for the quantization tests (`--model tests._user_model_quant:small_face_net`).

Small on purpose, but it has every pattern the quantizer must handle: conv->BN->PReLU, a residual add,
a BN *before* a padded conv, average pooling and a BatchNorm1d after the embedding layer.
"""

from __future__ import annotations

import torch
from torch import nn


class SmallFaceNet(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.PReLU(16))
        self.pre_bn = nn.BatchNorm2d(16)
        self.conv = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, dim)
        self.features = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.bn(self.conv(self.pre_bn(x)))
        x = self.pool(self.down(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def small_face_net() -> nn.Module:
    torch.manual_seed(0)
    model = SmallFaceNet()
    for m in model.modules():  # non-trivial BN statistics, as a trained model would have
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model
