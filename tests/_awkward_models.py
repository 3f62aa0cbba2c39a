"""Face models with the shapes of real ones that export has to cope with, given to edgeface as
`--model tests._awkward_models:<factory>` (random weights, deterministic).

- `prelu_view_net`: a PReLU MobileFaceNet-like net on a 112x96 input (SphereFace/CosFace-style crop) that
  flattens with `x.view(x.size(0), -1)`, with trained-like PReLU slopes: negative and above 1.
- `tiny_hybrid`: an EdgeNeXt-like hybrid: channels-last LayerNorm and Linear layers, GELU, layer-scale
  `gamma`, a cross-covariance attention with a per-head `temperature`, and shapes read from `x.shape`.
- `fft_net`: uses an op the ONNX exporter does not know (a user model export cannot handle).
- `shape_pool_net`: global pooling written with shape arithmetic, `h, w = x.shape[-2:]` then
  `F.avg_pool2d(x, (h, w))`, as many classic CNN repos do.
- `adaptive_pool_net`: a 112x96 net whose head was written for 112x112: `nn.AdaptiveAvgPool2d((7, 7))` on
  its 7x6 map, and a functional `F.adaptive_avg_pool2d(x, 4)` on 14x12 (output sizes that do not divide
  the input: windows of unequal size).
- `bn1d_head_net`: a head on a concat of pooled features: BatchNorm1d on the [N, C] vector, a Linear,
  BatchNorm1d, then `F.normalize` (a unit-norm embedding).
- `tiny_face_transformer`: a Face-Transformer-like ViT built from `nn.TransformerEncoder` (a class token,
  positional embedding, LayerNorm head), whose eval forward takes PyTorch's fused fast path.
- `shared_conv_net`: weight sharing: one conv stem applied to the image and its mirror image, one block
  applied twice in a row.
- `bias_kv_attention_net`: an nn.MultiheadAttention with `add_bias_kv`, which quantize leaves opaque (float).
- `gray_lightcnn`: a LightCNN-like net on 128x128 grayscale faces (one input channel, pixel / 255 with
  mean 0 and std 1), Max-Feature-Map activations; its `edgeface_spec` declares only input_size,
  channel_order GRAY, mean and std (the rest takes the defaults).
- `ghost_net`: a GhostFaceNets-like net: ghost modules (a PReLU output read by a depthwise conv and a
  concat), trained-like slopes, squeeze-and-excitation with hard-sigmoid gates, Hardswish, SiLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def trained_like_slopes(c: int, seed: int) -> torch.Tensor:
    """Slopes spread over [-4, 2.2] like those of PReLU nets trained in the wild (many negative, some > 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, generator=g) * 6.2 - 4.0


class PReLUViewNet(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)

        def block(cin: int, cout: int, k: int, s: int, groups: int = 1) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
                nn.PReLU(cout),
            )

        self.stem = block(3, 16, 3, 2)  # 56x48
        self.dw = block(16, 16, 3, 2, groups=16)  # 28x24
        self.pw = block(16, 32, 1, 1)
        self.res = block(32, 32, 3, 1, groups=32)
        self.down = block(32, 32, 3, 2)  # 14x12
        self.last = block(32, 32, 3, 2)  # 7x6
        self.fc = nn.Linear(32 * 7 * 6, dim)
        self.bn = nn.BatchNorm1d(dim)
        for k, m in enumerate(m for m in self.modules() if isinstance(m, nn.PReLU)):
            m.weight.data.copy_(trained_like_slopes(m.weight.numel(), k))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(self.dw(self.stem(x)))
        x = x + self.res(x)
        x = self.last(self.down(x))
        x = x.view(x.size(0), -1)
        return self.bn(self.fc(x))


def prelu_view_net() -> nn.Module:
    model = PReLUViewNet()
    model.edgeface_spec = {
        "input_size": [112, 96],
        "layout": "NCHW",
        "channel_order": "RGB",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "embedding_dim": 64,
    }
    return model


class XCA(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.linspace(0.5, 2.0, heads).reshape(heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = (attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


class TinyHybrid(nn.Module):
    def __init__(self, dim: int = 32, emb: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, dim, 4, 4)  # 28x28
        self.stem_norm = nn.LayerNorm(dim, eps=1e-6)
        self.dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.down = nn.Conv2d(dim, dim, 2, 2)  # 14x14
        self.norm_xca = nn.LayerNorm(dim, eps=1e-6)
        self.xca = XCA(dim, 4)
        self.gamma_xca = nn.Parameter(torch.full((dim,), 0.5))
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, emb)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(F.gelu(self.fc1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        x = self.down(x)
        B, C, H, W = x.shape
        t = x.reshape(B, C, H * W).permute(0, 2, 1)
        t = t + self.gamma_xca * self.xca(self.norm_xca(t))
        x = t.permute(0, 2, 1).reshape(B, C, H, W)
        x = self.head_norm(x.mean((2, 3)))
        return self.head(x)


def tiny_hybrid() -> nn.Module:
    return TinyHybrid()


class FFTNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return torch.fft.rfft(x.flatten(1), dim=1).abs()[:, :16]


def fft_net() -> nn.Module:
    return FFTNet()


class ShapePoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.BatchNorm2d(16), nn.PReLU(16))
        self.fc = nn.Linear(16, 24)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        h, w = x.shape[-2:]
        x = F.avg_pool2d(x, (h, w))
        return self.fc(x.view(x.size(0), -1))


def shape_pool_net() -> nn.Module:
    return ShapePoolNet()


class AdaptivePoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())  # 14x12
        self.down = nn.Conv2d(8, 8, 3, 2, 1)  # 7x6
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.fc = nn.Linear(8 * 49 + 8 * 16, 16)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        side = F.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.fc(torch.cat([self.pool(self.down(x)).flatten(1), side], 1))


def adaptive_pool_net() -> nn.Module:
    return AdaptivePoolNet()


class BN1dHeadNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.BatchNorm2d(8), nn.ReLU())  # 28x28
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, 4, 1), nn.BatchNorm2d(16), nn.PReLU(16))  # 7x7
        self.pre = nn.BatchNorm1d(8 + 16)
        self.fc = nn.Linear(8 + 16, 20)
        self.features = nn.BatchNorm1d(20)
        with torch.no_grad():
            for bn in (self.pre, self.features):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.3, 0.3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        b = self.b(a)
        f = torch.cat([F.adaptive_avg_pool2d(a, 1).flatten(1), F.adaptive_avg_pool2d(b, 1).flatten(1)], 1)
        return F.normalize(self.features(self.fc(self.pre(f))), dim=1)


def bn1d_head_net() -> nn.Module:
    return BN1dHeadNet()


class TinyFaceTransformer(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, 16, 16)  # 7x7 tokens
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 50, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 24)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t)[:, 0]))


def tiny_face_transformer() -> nn.Module:
    return TinyFaceTransformer()


class SharedConvNet(nn.Module):
    """One conv applied to the image and to its mirror image (weight sharing), and one block reused twice
    in a row: each module runs at two places in forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.BatchNorm2d(16), nn.ReLU())  # 28x28
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU())
        self.down = nn.Conv2d(16, 32, 3, 4, 1)  # 7x7
        self.fc = nn.Linear(32, 24)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) + self.stem(torch.flip(x, dims=[3])).flip(3)
        x = x + self.block(self.block(x))
        return self.fc(self.down(x).mean((2, 3)))


def shared_conv_net() -> nn.Module:
    return SharedConvNet()


class BiasKVAttentionNet(nn.Module):
    """A conv stem, then tokens through an nn.MultiheadAttention with `add_bias_kv` (learned key/value
    tokens appended), a configuration quantize does not write out: it stays one opaque float op."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, dim, 16, 16)  # 7x7 tokens
        self.attn = nn.MultiheadAttention(dim, 2, add_bias_kv=True, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 24)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.head(self.norm(t.mean(1)))


def bias_kv_attention_net() -> nn.Module:
    return BiasKVAttentionNet()


class MFM(nn.Module):
    """LightCNN's Max-Feature-Map: a conv to 2C channels, then the elementwise max of its two halves."""

    def __init__(self, cin: int, cout: int, k: int, s: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cout, k, s, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).chunk(2, dim=1)
        return torch.max(a, b)


class GrayLightCNN(nn.Module):
    def __init__(self, emb: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = MFM(1, 8, 5, 2)  # 64x64
        self.pool = nn.MaxPool2d(2, 2)  # 32x32
        self.conv2 = MFM(8, 16, 3, 2)  # 16x16
        self.conv3 = MFM(16, 16, 3, 2)  # 8x8
        self.fc = nn.Linear(16 * 8 * 8, emb)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.pool(self.conv1(x))))
        return self.fc(x.view(x.size(0), -1))


def gray_lightcnn() -> nn.Module:
    model = GrayLightCNN()
    model.edgeface_spec = {"input_size": [128, 128], "channel_order": "GRAY", "mean": [0.0], "std": [1.0]}
    return model


class _SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, c // 4, 1)
        self.expand = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(self.pool(x)))))


class _Ghost(nn.Module):
    """GhostNet's module: half the channels from a 1x1 conv, the other half from a cheap depthwise conv of
    those, concatenated (the PReLU output is read twice: by the depthwise conv and the concat)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.primary = nn.Sequential(
            nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.PReLU(half)
        )
        self.cheap = nn.Sequential(
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half), nn.PReLU(half)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], dim=1)


class GhostNet(nn.Module):
    """A GhostFaceNets-like net: ghost modules with trained-like PReLU slopes, squeeze-and-excitation with
    hard-sigmoid gates, Hardswish and SiLU activations, a GDC head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.g1 = _Ghost(16, 32)
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32, bias=False), nn.BatchNorm2d(32))
        self.se = _SqueezeExcite(32)
        self.g2 = _Ghost(32, 32)
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.SiLU())
        self.gdc = nn.Sequential(nn.Conv2d(64, 64, 7, 1, 0, groups=64, bias=False), nn.BatchNorm2d(64))
        self.fc = nn.Linear(64, 128, bias=False)
        for k, m in enumerate(m for m in self.modules() if isinstance(m, nn.PReLU)):
            m.weight.data.copy_(trained_like_slopes(m.weight.numel(), 10 + k))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.g1(self.stem(x))
        x = self.se(self.dw(x))
        x = x + self.g2(x)
        x = self.gdc(self.down2(self.down(x)))
        return self.fc(torch.flatten(x, 1))


def ghost_net() -> nn.Module:
    return GhostNet()
