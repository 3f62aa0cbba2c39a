"""A user's own face model, given to edgeface as `--model tests._user_model:<factory>`."""

from __future__ import annotations

import torch
from torch import nn


class TinyFaceNet(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.PReLU(16),
            nn.Conv2d(16, 32, 3, 2, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(32, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.body(x), 1))


def tiny_face_net() -> nn.Module:
    return TinyFaceNet()


def declared_spec_net() -> nn.Module:
    model = TinyFaceNet(64)
    model.edgeface_spec = {
        "input_size": [96, 96],
        "layout": "NCHW",
        "channel_order": "BGR",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "embedding_dim": 64,
    }
    return model


class TupleOutputNet(TinyFaceNet):
    """Returns (embedding, logits), as many training repos' models do."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = super().forward(x)
        return e, e[:, :10]


def tuple_output_net() -> nn.Module:
    model = TupleOutputNet()
    model.edgeface_spec = {**declared_spec_net().edgeface_spec, "embedding_dim": 32}
    return model


def wrong_dim_spec_net() -> nn.Module:
    """Declares a 128-d embedding; the network returns 32 values."""
    model = TinyFaceNet(32)
    model.edgeface_spec = {**declared_spec_net().edgeface_spec, "embedding_dim": 128}
    return model


def scripted_face_net() -> nn.Module:
    """What a repository that ships TorchScript hands over: the network compiled by torch.jit.script."""
    torch.manual_seed(0)
    return torch.jit.script(TinyFaceNet().eval())
