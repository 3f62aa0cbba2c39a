"""Float fallback by measured sensitivity: the few int8 layers whose float input int8 cannot carry.

In a CNN-transformer hybrid a handful of tensors that feed int8 Linear layers (the GELU output of one MLP
with massive activations, say) carry most of the quantization loss: on EdgeFace-XS two of 44 quantizers
caused about 40 % of the embedding error. Each quantizer on an edge from a float op into integer layers is
switched on alone (weights quantized, all other activations float) on a few calibration faces and its
loss (1 - cosine to the float model) is measured; the layers that read a quantizer whose loss is at least
`factor` times the mean over all quantizers (and at least MIN_LOSS) stay float. Normally only such edges
are candidates: there, float costs one Linear's int8 kernel, never an int8 chain of a CNN (whose
quantizers sit on integer ops' outputs). When the fully quantized probe falls below CNN_TRIGGER (the
exporter's int8 parity bar, converters/sensitivity.py; 8-bit activations only) every quantizer is a
candidate, as in the exporter: a plain CNN then keeps one tensor's writer and readers float rather than
ship a broken embedding. Measured on mobilefacenet pruned to 64 % of its MACs and fine-tuned: the ReLU6
output feeding the 7x7 global depthwise conv, quantized alone, drops the cosine to 0.916, and the GDC's
own int8 weights to 0.975.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from edgeface.compress.quant.plan import reader_nodes
from edgeface.compress.quant.prepare import Placement, activation_quantizers, set_quant_enabled

PROBE_IMAGES = 32
MIN_LOSS = 2e-4  # of mean cosine: below this a quantizer is never worth a float layer
CNN_TRIGGER = 0.99  # fully quantized probe cosine below which non-edge quantizers are candidates too


def _probe(batches: list[Tensor], n: int = PROBE_IMAGES) -> list[Tensor]:
    out, have = [], 0
    for b in batches:
        if have >= n:
            break
        out.append(b[: n - have])
        have += int(out[-1].shape[0])
    return out


def _loss(model: nn.Module, probe: list[Tensor], ref: list[Tensor]) -> float:
    with torch.no_grad():
        total = sum(
            float((1 - F.cosine_similarity(model(x), r)).sum()) for x, r in zip(probe, ref, strict=True)
        )
    return total / sum(int(x.shape[0]) for x in probe)


def sensitive_layers(
    qmodel: fx.GraphModule,
    reference: nn.Module,
    place: Placement,
    batches: list[Tensor],
    factor: float,
) -> dict[str, float]:
    """{reader layer: the quantizer's loss / mean loss} for candidate quantizers at least `factor` x the
    mean: edge quantizers, or every quantizer when the fully quantized probe is below CNN_TRIGGER."""
    edges = {p.name: p for p in place.points if p.readers is not None}
    if factor <= 0:
        return {}
    probe = _probe(batches)
    with torch.no_grad():
        ref = [reference(x) for x in probe]
    acts = activation_quantizers(qmodel)
    # the exporter's bar is an int8 one; a w6a6 model is below it by design (mobilefacenet: 0.937)
    everything = all(q.bits == 8 for q in acts.values()) and 1.0 - _loss(qmodel, probe, ref) < CNN_TRIGGER
    if not edges and not everything:
        return {}
    enabled = {n: q.enabled for n, q in acts.items()}
    losses: dict[str, float] = {}
    try:
        set_quant_enabled(qmodel, activations=False)
        base = _loss(qmodel, probe, ref)
        for name, q in acts.items():
            q.enabled = True
            losses[name] = max(_loss(qmodel, probe, ref) - base, 0.0)
            q.enabled = False
    finally:
        for n, q in acts.items():
            q.enabled = enabled[n]
    mean = sum(losses.values()) / max(len(losses), 1)
    if mean <= 0:
        return {}
    nodes = {n.name: n for n in qmodel.graph.nodes}
    points = {p.name: p for p in place.points}
    chosen: dict[str, float] = {}
    for name, loss in losses.items():
        if loss < max(factor * mean, MIN_LOSS):
            continue
        if name in edges:
            readers = [nodes[r] for r in edges[name].readers or [] if r in nodes]
        elif everything and name in points:
            # a tensor an integer op writes for all its readers: that op writes float instead
            quantizer = [n for n in nodes.values() if n.op == "call_module" and n.target == name]
            readers = [r for n in quantizer for r in reader_nodes(qmodel, n)]
            chosen[points[name].layer or points[name].end.name] = round(loss / mean, 2)
        else:
            continue
        for node in readers:
            if node.op == "call_module" and str(node.target) in place.layers:
                chosen[str(node.target)] = round(loss / mean, 2)
    return chosen
