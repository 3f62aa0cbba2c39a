"""A tiny CNN-transformer hybrid with the traps of EdgeFace/EdgeNeXt, for pruning tests (`--model
tests._hybrid_model:tiny_hybrid`): channels-last LayerNorm + Linear MLPs inside NCHW blocks, layer-scale
`gamma` parameters, a channel split with `chunk` whose sizes the forward recomputes, cross-covariance
attention with `qkv.reshape(B, N, 3, heads, -1)`, `unbind` and a per-head `temperature` (heads, 1, 1),
and shapes read from `x.shape`. Stage 1 (after a downsample conv) has only conv blocks, so its residual
stream, LayerNorms and gammas can be pruned; stage 2's stream goes through the split and its qkv through
the head reshape, so they must stay whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ConvBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class XCA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return self.proj((attn.softmax(-1) @ v).permute(0, 3, 1, 2).reshape(B, N, C))


class SplitBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim // 2, dim // 2, 3, padding=1, groups=dim // 2)
        self.norm_xca = nn.LayerNorm(dim)
        self.xca = XCA(dim, heads)
        self.gamma_xca = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.conv(a), b], 1)
        B, C, H, W = x.shape
        t = x.reshape(B, C, H * W).permute(0, 2, 1)
        t = t + self.gamma_xca * self.xca(self.norm_xca(t))
        return t.reshape(B, H, W, C).permute(0, 3, 1, 2)


class TinyHybrid(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8))
        self.stage0 = ConvBlock(8)
        self.down1 = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 16, 2, 2))
        self.stage1 = nn.Sequential(ConvBlock(16), ConvBlock(16))
        self.down2 = nn.Sequential(LayerNorm2d(16), nn.Conv2d(16, 24, 2, 2))
        self.stage2 = nn.Sequential(ConvBlock(24), SplitBlock(24))
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down2(self.stage1(self.down1(self.stage0(self.stem(x))))))
        return self.head(self.norm(x.mean((2, 3))))


def tiny_hybrid() -> nn.Module:
    torch.manual_seed(0)
    return TinyHybrid().eval()
