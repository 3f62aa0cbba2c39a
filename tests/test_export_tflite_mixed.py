"""TFLite int8 of a hybrid-like network (issue 11): the grids ai-edge-quantizer keeps, constant folding, the
float DIV, and the sensitivity pass that leaves an outlier residual stream float.

The network is small (32x32 input, litert-torch converts it in seconds) but has what made EdgeFace-XS fail:
a residual stream with one outlier channel 300x the others that one per-tensor int8 grid cannot hold, a
channel split whose convolved half is concatenated back, an L2 normalisation `x / max(norm, eps)`, a softmax
read through a reshape, and a positional encoding computed from constants only.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from edgeface.converters import tflite as tfl
from edgeface.converters import tflite_learned as tl
from edgeface.converters import tflite_mixed as mixed
from edgeface.converters.parity import cosine_rows
from edgeface.converters.tflite_fold import foldable_ops
from torch import nn

from edgeface.spec import ModelSpec

SPEC = ModelSpec(name="outlier", input_size=(32, 32), embedding_dim=16)


class OutlierHybrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 4, 4)  # 8x8 tokens
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.mix = nn.Linear(8, 8, bias=False)
        self.attn = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)  # no bias to hide a crushed input behind
        gain = torch.ones(1, 8, 1, 1)
        gain[0, 0] = 300.0  # the outlier channel of the residual stream
        self.register_buffer("gain", gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.stem(x) * self.gain
        a, b = r.chunk(2, dim=1)
        r = r + torch.cat([self.dw(a), b], 1)  # the residual stream the outlier rides on
        t = r.flatten(2).transpose(1, 2)  # (1, 64, 8)
        pos = torch.sin(torch.arange(64, dtype=torch.float32) / 7.0)[None, :, None]  # constants only
        q = F.normalize(self.attn(t[..., 1:].repeat(1, 1, 2)[..., :8] + pos), dim=1)
        w = (q.transpose(1, 2) @ q).softmax(-1).reshape(1, 8, 8)
        t = t[..., 1:].repeat(1, 1, 2)[..., :8]  # the head reads the small channels only
        y = self.mix(t) @ w
        return self.head(y.mean(1))


@pytest.fixture(scope="module")
def built() -> dict:
    net = OutlierHybrid().eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 32, 32, 3)).astype(np.float32)
    tfl._FLOAT_CACHE.clear()
    mixed_out, _, info = tfl.build_tflite(net, SPEC, "int8", [x[:32]])
    float_data = tfl._FLOAT_CACHE["data"]
    tfl._FLOAT_CACHE["fragile"] = []  # the same export with nothing kept float by measurement
    full_out, _, full_info = tfl.build_tflite(net, SPEC, "int8", [x[:32]])
    tfl._FLOAT_CACHE.clear()
    return {
        "float": float_data,
        "mixed": mixed_out,
        "info": info,
        "full": full_out,
        "full_info": full_info,
        "held": x[32:],
    }


def _embed(data: bytes, x: np.ndarray) -> np.ndarray:
    it = tfl._interpreter(data)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for a in x:
        s, z = inp["quantization"]
        v = np.clip(np.round(a / s + z), -128, 127).astype(np.int8) if inp["dtype"] == np.int8 else a
        it.set_tensor(inp["index"], v[None])
        it.invoke()
        y = it.get_tensor(out["index"]).reshape(-1)
        s, z = out["quantization"]
        rows.append((y.astype(np.float32) - z) * s if out["dtype"] == np.int8 else y)
    return np.stack(rows)


def test_constants_are_folded_and_grids_are_kept(built: dict) -> None:
    """The build raises when a grid asked for is not in the file (check_targets), so getting here means
    the concat, max(norm, eps) and softmax -> reshape grids agreed; the positional encoding is a constant."""
    model = tl.read(built["float"])
    assert foldable_ops(model) == []
    kinds = {tl.op_name(model, op) for op in model.subgraphs[0].operators}
    assert not kinds & {"SIN", "FLOOR_DIV", "POW"} and {"CONCATENATION", "SOFTMAX", "DIV"} <= kinds
    assert built["full_info"]["float_op_reasons"]["DIV"].startswith("int8 DIV aborts")


def test_outlier_stream_is_kept_float_and_restores_parity(built: dict) -> None:
    ref = _embed(built["float"], built["held"])
    full = cosine_rows(_embed(built["full"], built["held"]), ref).mean()
    mixed_cos = cosine_rows(_embed(built["mixed"], built["held"]), ref)
    assert full < 0.9  # fully int8, the outlier channel's grid crushes the others
    assert mixed_cos.mean() >= 0.99 and mixed_cos.min() >= 0.95
    kept = built["info"]["kept_float_tensors"]
    assert kept and min(kept.values()) < 0.9  # the worst tensor alone collapses the embedding
    # the tensors kept float are float in the file, and their readers read them as floats
    model = tl.read(built["mixed"])
    graph = model.subgraphs[0]
    by_name = {tl.tensor_name(t): t for t in graph.tensors}
    assert all(by_name[n].type == 0 for n in kept)
    # what can stay integer does: some weighted ops keep int8 per-channel weights
    assert tfl.inspect_tflite(built["mixed"])["per_channel_layers"] >= 1


def test_keeping_a_tensor_float_takes_its_readers_through_code_moving_ops(built: dict) -> None:
    data = built["float"]
    model = tl.read(data)
    graph = model.subgraphs[0]
    kinds = [tl.op_name(model, op) for op in graph.operators]
    k = kinds.index("CONCATENATION")
    name = tl.tensor_name(graph.tensors[graph.operators[k].outputs[0]])
    ops = mixed.float_ops_for(data, [name])
    assert k in ops
    readers = [j for j, op in enumerate(graph.operators) if graph.operators[k].outputs[0] in list(op.inputs)]
    assert set(readers) <= ops
    regex = mixed.no_quantize_regex(data, ops)
    assert re.fullmatch(regex, name + ";")
