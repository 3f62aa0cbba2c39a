"""TFLite artifacts without TensorFlow: litert-torch converts the float model, ai-edge-quantizer quantizes.

The float graph comes from litert-torch (NHWC input through `to_channel_last_io`, so no transpose runs on the
device). int8 is ai-edge-quantizer's static recipe (int8 activations, int8 symmetric per-channel weights on
CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED, int32 biases, int8 graph input and output), which XNNPACK
runs end to end. The activation ranges it is given are ours, not its min/max calibration: every activation
tensor of the float TFLite graph is sampled on the calibration images and its range chosen by the same MSE
search as the ONNX export (qdq.RangeCollector), so both artifacts of one export agree. litert-torch's PT2E
quantizer was measured too (docs/speed.md); it needs a second, slower conversion of a prepared graph.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
from edgeface.converters import qdq

from edgeface.errors import EdgefaceError
from edgeface.spec import ModelSpec, TensorQuant

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def float_tflite(net: Any, spec: ModelSpec) -> bytes:
    """NHWC float32 TFLite flatbuffer of an eval-mode nn.Module."""
    import litert_torch
    import torch

    h, w = spec.input_size
    wrapped = litert_torch.to_channel_last_io(net.eval(), args=[0]).eval()
    # litert-torch prints its progress on stdout, which belongs to `--json`
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        edge = litert_torch.convert(wrapped, (torch.zeros(1, h, w, 3),))
        return bytes(edge.model_content())


def _interpreter(data: bytes, preserve: bool = False) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data, num_threads=1, experimental_preserve_all_tensors=preserve)
    interp.allocate_tensors()
    return interp


def activation_stats(data: bytes, batches: Iterable[np.ndarray]) -> tuple[qdq.RangeCollector, list[str]]:
    """Sample every non-constant float tensor (graph input and op outputs) over the calibration images."""
    interp = _interpreter(data, preserve=True)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    inp = interp.get_input_details()[0]
    wanted = [inp["index"]] + [o for op in interp._get_ops_details() for o in op["outputs"] if o >= 0]
    wanted = [i for i in dict.fromkeys(wanted) if details[i]["dtype"] == np.float32]
    collector = qdq.RangeCollector()
    for batch in batches:
        for x in batch:
            interp.set_tensor(inp["index"], x[None].astype(np.float32))
            interp.invoke()
            for i in wanted:
                collector.update(details[i]["name"], interp.get_tensor(i))
    return collector, [details[i]["name"] for i in wanted]


_FLOAT_CACHE: dict[str, Any] = {}
CALIB_IMAGES = 96  # the float interpreter with every tensor preserved runs without XNNPACK: keep it short


def build_tflite(
    net: Any,
    spec: ModelSpec,
    precision: str,
    batches: list[np.ndarray],
    plan: Any = None,
    method: str = "mse",
) -> tuple[bytes, ModelSpec, dict[str, Any]]:
    """(flatbuffer without spec, spec, info) for fp32 or int8."""
    if precision == "w6a6":
        raise EdgefaceError(
            "w6a6 is exported as ONNX only (QuantizeLinear-Clip-DequantizeLinear keeps activations on the "
            "6-bit "
            "grid); TFLite has no standard operator to hold int8 activations to 6 bits: use --format onnx"
        )
    key = id(net)
    if _FLOAT_CACHE.get("key") != key:  # fp32 and int8 of one export share the slow conversion
        _FLOAT_CACHE.update(key=key, data=float_tflite(net, spec))
    data = _FLOAT_CACHE["data"]
    spec = spec.replace(layout="NHWC")
    if precision == "fp32":
        return data, spec.replace(precision="fp32"), {"per_channel_layers": 0, "quantizer": None}
    from ai_edge_quantizer import quantizer, recipe

    images = np.concatenate(batches)[:CALIB_IMAGES]
    stats, names = activation_stats(data, [images])
    qsvs = {}
    for name in names:
        lo, hi = stats.range(name, method, 8)
        qsvs[name] = {
            "min": np.array(lo, np.float32).reshape(1, 1, 1, 1),
            "max": np.array(hi, np.float32).reshape(1, 1, 1, 1),
        }
    q = quantizer.Quantizer(data, recipe.static_wi8_ai8())
    with contextlib.redirect_stdout(sys.stderr):
        result = q.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
    out = bytes(result.quantized_model)
    info = inspect_tflite(out)
    if info["float_ops"]:
        raise EdgefaceError(f"int8 TFLite still has float operators: {', '.join(info['float_ops'])}")
    new_spec = spec.replace(
        precision="w8a8",
        input_quant=info["input_quant"],
        output_quant=info["output_quant"],
        weight_quant="int8 symmetric per-channel (CONV_2D axis 0, DEPTHWISE_CONV_2D axis 3, "
        "FULLY_CONNECTED axis 0)",
    )
    return (
        out,
        new_spec,
        {
            "per_channel_layers": info["per_channel_layers"],
            "quantizer": "ai-edge-quantizer",
            "int8_weight_bytes": info["int8_weight_bytes"],
        },
    )


def inspect_tflite(data: bytes) -> dict[str, Any]:
    """Per-channel weight layers, float operators left, and the graph's input/output quantization."""
    interp = _interpreter(data)
    details = {t["index"]: t for t in interp.get_tensor_details()}
    per_channel, weight_bytes, float_ops = 0, 0, []
    for op in interp._get_ops_details():
        ins = [details[i] for i in op["inputs"] if i >= 0]
        if op["op_name"] in WEIGHTED_OPS and len(ins) > 1:
            w = ins[1]
            if len(w["quantization_parameters"]["scales"]) > 1:
                per_channel += 1
            if w["dtype"] == np.int8:
                weight_bytes += int(np.prod(w["shape"]))
        if any(t["dtype"] == np.float32 for t in ins) and op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
            float_ops.append(op["op_name"])

    def tq(d: dict[str, Any]) -> TensorQuant | None:
        scale, zp = d["quantization"]
        if d["dtype"] not in (np.int8, np.uint8) or not scale:
            return None
        return TensorQuant(scale=float(scale), zero_point=int(zp), dtype=np.dtype(d["dtype"]).name)

    return {
        "per_channel_layers": per_channel,
        "int8_weight_bytes": weight_bytes,
        "float_ops": sorted(set(float_ops)),
        "input_quant": tq(interp.get_input_details()[0]),
        "output_quant": tq(interp.get_output_details()[0]),
    }
