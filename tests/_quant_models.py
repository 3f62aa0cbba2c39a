"""Awkward user models for the quantization tests (`--model tests._quant_models:<factory>`).

- `tiny_hybrid`: an EdgeNeXt-like CNN-transformer hybrid in miniature: a patchify stem with a channels-first
  LayerNorm done by permutes, blocks with a depthwise conv, channels-last LayerNorm -> Linear -> GELU ->
  Linear, layer-scale `gamma`, cross-covariance attention with a per-head `temperature`, B, C, H, W read
  from x.shape and used in reshape(B, C, H * W), and a LayerNorm -> Linear head. Its weights imitate a
  trained network (layer scales far from their 1e-6 init, LayerNorm outlier channels, varied temperatures).
- `prelu_net_112x96`: a PReLU network for 112x96 inputs (SphereFace/CosFace-style crop) whose PReLU slopes
  are trained-like, drawn from [-4, 2.2] (many negative, some > 1), with BN everywhere, a residual add and
  `x.view(x.size(0), -1)` before the embedding Linear, then a BatchNorm1d.
- `fragile_tail_net`: a residual CNN ending like MobileFaceNet (1x1 conv -> ReLU6 -> 7x7 global depthwise
  conv -> Linear) whose ReLU6 output is int8-fragile, as in mobilefacenet pruned and fine-tuned: one
  channel saturates at 6 and sets the per-tensor grid while the others stay near 0.01, and the global
  depthwise conv weights those small channels 60x.
- `split_cat_net`: channel concats as EdgeFace-XS's split blocks write them: the input's channels split in
  two, one half through a conv without activation, then concatenated back with the other half; and a
  concat of two such convs. A conv output only the concat reads is written on the concat's grid, where
  the w6a6 TFLite export's 6-bit clamp moves it off the grid XNNPACK's concatenation needs on every input.
- `hswish_prelu_net`: Hardswish next to PReLUs with trained-like slopes, adaptive pooling and a
  BatchNorm1d head, on a 128x128 ImageNet-normalised input.
- `batch_of_one_net`: written for one image at a time (`view(1, -1)`), so quantization must fail on it
  with one line naming the layer that breaks.
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


class XCA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        attn = attn.softmax(dim=-1)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


class HybridBlock(nn.Module):
    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.xca = XCA(dim, heads)
        self.gamma_xca = nn.Parameter(1e-6 * torch.ones(dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        B, C, H, W = x.shape
        t = x.reshape(B, C, H * W).permute(0, 2, 1)
        t = t + self.gamma_xca * self.xca(self.norm_xca(t))
        t = t.reshape(B, H, W, C)
        t = self.fc2(self.act(self.fc1(self.norm(t))))
        t = self.gamma * t
        return shortcut + t.permute(0, 3, 1, 2)


class TinyHybrid(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), LayerNorm2d(16, eps=1e-6))
        self.block1 = HybridBlock(16)
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 2, stride=2))
        self.block2 = HybridBlock(32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(32, eps=1e-6)
        self.fc = nn.Linear(32, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(self.norm(torch.flatten(self.pool(x), 1)))


def tiny_hybrid() -> nn.Module:
    torch.manual_seed(0)
    model = TinyHybrid()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.endswith("gamma_xca"):
                p.copy_(torch.empty(p.shape).uniform_(0.2, 1.0, generator=g))
            elif name.endswith("temperature"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 3.0, generator=g))
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=g))
                m.weight[0] = 20.0  # an outlier channel, as trained LayerNorms have
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-0.2, 0.2, generator=g))
    return model.eval()


class PReLUNet(nn.Module):
    """conv-BN-PReLU stages, a residual add, and the embedding through x.view(x.size(0), -1)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()

        def unit(cin: int, cout: int, stride: int, groups: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
                nn.PReLU(cout),
            )

        self.conv1 = unit(3, 16, 2)
        self.dw = unit(16, 16, 1, groups=16)
        self.conv2 = unit(16, 32, 2)
        self.res = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32))
        self.conv3 = unit(32, 32, 2)
        self.conv4 = unit(32, 16, 2)
        self.fc = nn.Linear(16 * 7 * 6, dim)
        self.features = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.dw(self.conv1(x)))
        x = x + self.res(x)
        x = self.conv4(self.conv3(x))
        x = x.view(x.size(0), -1)
        return self.features(self.fc(x))


def trained_like(
    model: nn.Module, seed: int, slopes: tuple[float, float], bn_scale: tuple[float, float], bn_shift: float
) -> None:
    """PReLU slopes and BatchNorm statistics of a trained network, not their initialisation: slopes spread
    over `slopes` (negative ones and some above 1, which the exporters' PReLU rewrites must handle), running
    statistics and affine parameters off their 0/1 defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.empty(m.weight.shape).uniform_(*slopes, generator=g))
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                if m.affine:
                    m.weight.uniform_(*bn_scale, generator=g)
                    m.bias.uniform_(-bn_shift, bn_shift, generator=g)


def prelu_net_112x96() -> nn.Module:
    torch.manual_seed(0)
    model = PReLUNet()
    trained_like(model, seed=2, slopes=(-4.0, 2.2), bn_scale=(0.5, 1.5), bn_shift=0.2)  # many negative slopes
    model.edgeface_spec = {
        "input_size": [112, 96],
        "layout": "NCHW",
        "channel_order": "RGB",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "embedding_dim": 64,
    }
    return model.eval()


class SplitCatNet(nn.Module):
    """stem -> chunk(2) -> cat(conv(half 1), half 2) -> cat(conv(.), conv(.)) -> pooled Linear."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU())
        self.branch = nn.Conv2d(8, 8, 3, padding=1)  # no activation: the 6-bit grid needs a clamp
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        x = torch.cat([self.branch(a), b], dim=1)  # one input clamped, one a slice of the stem's output
        x = torch.cat([self.left(x), self.right(x)], dim=1)  # both inputs clamped
        return self.fc(torch.flatten(self.pool(x), 1))


def split_cat_net() -> nn.Module:
    torch.manual_seed(0)
    return SplitCatNet().eval()


class BatchOfOneNet(nn.Module):
    """Written for one image at a time: `view(1, -1)` breaks on a batch (a real user-model mistake)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 8, stride=8)
        self.fc = nn.Linear(8 * 14 * 14, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(1, -1))


def batch_of_one_net() -> nn.Module:
    torch.manual_seed(0)
    return BatchOfOneNet().eval()


class FragileTailNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def unit(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.stem = unit(3, 16, 4)  # 28 x 28
        self.block1 = nn.Sequential(unit(16, 16, 1), nn.Conv2d(16, 16, 3, 1, 1))
        self.down1 = unit(16, 24, 2)  # 14 x 14
        self.down2 = unit(24, 32, 2)  # 7 x 7
        self.block2 = nn.Sequential(unit(32, 32, 1), nn.Conv2d(32, 32, 3, 1, 1))
        self.expand = nn.Sequential(nn.Conv2d(32, 48, 1), nn.ReLU6())
        self.gdc = nn.Conv2d(48, 48, 7, groups=48, bias=False)
        self.fc = nn.Linear(48, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.block1(x)
        x = self.down2(self.down1(x))
        x = x + self.block2(x)  # read only by `expand`: with it float, this addition is float too
        x = self.expand(x)
        return self.fc(self.gdc(x).flatten(1))


def fragile_tail_net() -> nn.Module:
    torch.manual_seed(0)
    model = FragileTailNet()
    with torch.no_grad():
        conv = model.expand[0]
        conv.weight.mul_(0.01)
        conv.bias.fill_(0.01)
        conv.bias[0] = 100.0  # always 6 after ReLU6: the per-tensor grid spans [0, 6]
        model.gdc.weight.mul_(60.0)
        model.gdc.weight[0] = 0.01
    return model.eval()


class HswishPReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def unit(cin: int, cout: int, act: nn.Module) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), act)

        self.body = nn.Sequential(
            unit(3, 16, nn.Hardswish()),
            unit(16, 32, nn.PReLU(32)),
            unit(32, 32, nn.PReLU(32)),
            unit(32, 64, nn.Hardswish()),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 48)
        self.features = nn.BatchNorm1d(48, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(self.pool(self.body(x)).reshape(-1, 64)))


def hswish_prelu_net() -> nn.Module:
    torch.manual_seed(0)
    model = HswishPReLUNet()
    trained_like(model, seed=3, slopes=(-1.0, 2.0), bn_scale=(0.5, 2.0), bn_shift=0.3)
    model.edgeface_spec = {
        "input_size": [128, 128],
        "layout": "NCHW",
        "channel_order": "RGB",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "embedding_dim": 48,
    }
    return model.eval()
