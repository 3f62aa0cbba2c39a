"""Activation ranges from calibration images: min-max, percentile or MSE.

One pass over the calibration batches records each quantizer's min/max (all `minmax` needs) and a
2048-bin histogram (re-binned when the range grows), from which `percentile` clips the tails and `mse`
picks the clipping range that minimises the expected squared quantization error (rounding inside,
clipping outside). Weights quantize first, so activation ranges are measured on the network that will run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, fx, nn

from edgeface.compress.quant.fakequant import ActQuant, act_range, affine_qparams
from edgeface.compress.quant.graph import locate_failure
from edgeface.compress.quant.prepare import activation_quantizers, weight_quantizers
from edgeface.errors import EdgefaceError

CALIBRATIONS = ("minmax", "percentile", "mse")


def _run(model: nn.Module, batches: list[Tensor], step: Callable[[], None] | None) -> None:
    """Forward every batch; a failure inside a user's model becomes a ModelError naming the layer."""
    with torch.no_grad():
        for x in batches:
            try:
                model(x)
            except EdgefaceError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure in the user's graph: name where it happened
                if isinstance(model, fx.GraphModule):
                    raise locate_failure(model, x, e) from e
                raise
            if step is not None:
                step()


def _hist_edges(q: ActQuant) -> Tensor:
    lo, hi = q.hist_range
    return torch.linspace(lo, hi, ActQuant.HIST_BINS + 1, dtype=torch.float64)


def percentile_range(q: ActQuant, percentile: float) -> tuple[float, float]:
    assert q.hist is not None
    edges = _hist_edges(q)
    cdf = torch.cumsum(q.hist.double(), 0) / q.hist.sum().double().clamp(min=1)
    tail = 1.0 - percentile / 100.0
    lo_i = int(torch.searchsorted(cdf, torch.tensor([tail], dtype=torch.float64)).item())
    hi_i = int(torch.searchsorted(cdf, torch.tensor([1.0 - tail], dtype=torch.float64)).item())
    lo = float(edges[min(lo_i, len(edges) - 1)]) if q.min_val < 0 else 0.0
    return lo, float(edges[min(hi_i + 1, len(edges) - 1)])


def mse_range(q: ActQuant, grid: int = 100, lowest: float = 0.2) -> tuple[float, float]:
    """Shrink [min, max] by a common factor; keep the factor with the least expected squared error."""
    assert q.hist is not None
    edges = _hist_edges(q)
    centers = (edges[:-1] + edges[1:]) / 2
    counts = q.hist.double()
    qmin, qmax = act_range(q.bits)
    lo0, hi0 = min(q.min_val, 0.0), max(q.max_val, 0.0)
    best, best_err = (lo0, hi0), float("inf")
    for a in torch.linspace(1.0, lowest, grid).tolist():
        scale, zp = affine_qparams(lo0 * a, hi0 * a, q.bits)
        deq = (torch.clamp(torch.round(centers / scale) + zp, qmin, qmax) - zp) * scale
        err = float((counts * (deq - centers) ** 2).sum())
        if err < best_err:
            best, best_err = (lo0 * a, hi0 * a), err
    return best


def calibrate(
    model: nn.Module,
    batches: list[Tensor],
    method: str = "percentile",
    percentile: float = 99.99,
    progress: bool = True,
) -> None:
    """Set every weight scale and activation scale/zero point of a prepared model, in place."""
    from tqdm.auto import tqdm

    if method not in CALIBRATIONS:
        raise EdgefaceError(f"unknown calibration '{method}'; choose one of {', '.join(CALIBRATIONS)}")
    if not batches:
        raise EdgefaceError("no calibration images")
    model.eval()
    for layer in weight_quantizers(model).values():
        layer.refresh_weight_scale("mse" if method == "mse" else "minmax")
        layer.quant_enabled = True
    acts = activation_quantizers(model)
    mode = "minmax" if method == "minmax" else "hist"
    bar = tqdm(total=len(batches), desc=f"calibrate ({method})", unit="batch", disable=not progress)
    try:
        for q in acts.values():
            q.enabled = False
            q.observe = mode
            q.reset_stats()
        _run(model, batches, lambda: bar.update(1))
    finally:
        bar.close()
        for q in acts.values():
            q.observe = None
            q.enabled = True
    for name, q in acts.items():
        if q.min_val > q.max_val:
            raise EdgefaceError(f"activation quantizer {name} saw no data during calibration")
        if method == "minmax":
            lo, hi = q.min_val, q.max_val
        elif method == "percentile":
            lo, hi = percentile_range(q, percentile)
        else:
            lo, hi = mse_range(q)
        q.set_range(lo, hi)
        q.hist = None


def correct_bias(
    qmodel: nn.Module, reference: nn.Module, batches: list[Tensor], axes: dict[str, int] | None = None
) -> None:
    """Empirical bias correction: remove the mean shift that quantization adds at each layer's output.

    Rounding small post-ReLU values to zero and clipping tails biases a channel's mean, and a following
    linear stretch (e.g. MobileFaceNet's 7x7 global depthwise conv, then the embedding layer) carries that
    bias straight into the embedding. For every layer, on the *float* model's input to that layer, compare
    the float layer's per-channel output mean with the quantized layer's on the quantized input, and move
    the difference into the bias. Measuring each layer on float inputs keeps corrections local, so they do
    not double-count drift that an upstream correction already removes. `reference` is the float model the
    quantizers were inserted into (same module names). `axes` gives each layer's channel axis (from the
    traced shapes: a Linear on an NHWC tensor has its channels last); by default convs 1, linears last.
    """
    from edgeface.compress.quant.plan import _producer_quantizer

    assert isinstance(qmodel, fx.GraphModule)
    layers = weight_quantizers(qmodel)
    input_q: dict[str, ActQuant | None] = {}
    for node in qmodel.graph.nodes:
        if node.op == "call_module" and str(node.target) in layers:
            src = _producer_quantizer(qmodel, node.args[0])
            input_q[str(node.target)] = qmodel.get_submodule(src) if src else None  # type: ignore[assignment]
    diffs: dict[str, Tensor] = {}
    handles = []
    for name, qlayer in layers.items():
        default = -1 if isinstance(qlayer, nn.Linear) else 1
        axis = (axes or {}).get(name, default)

        def hook(
            m: nn.Module, inp: tuple[Tensor, ...], out: Tensor, name: str = name, q=qlayer, axis: int = axis
        ) -> None:
            aq = input_q.get(name)
            x = inp[0] if aq is None else aq(inp[0])
            ax = axis % out.dim()
            dims = [d for d in range(out.dim()) if d != ax]
            d = (q(x) - out).double().mean(dim=dims)
            diffs[name] = diffs.get(name, 0) + d  # type: ignore[operator]

        handles.append(reference.get_submodule(name).register_forward_hook(hook))
    try:
        _run(reference.eval(), batches, None)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for name, layer in layers.items():
            if layer.bias is not None and name in diffs:
                layer.bias.sub_((diffs[name] / len(batches)).to(layer.bias.dtype))
