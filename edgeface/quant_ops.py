"""Quantization decided per operator, in one table (see ../shared/DESIGN.md and docs/architecture.md).

Every place that decides "does this op get int8 tensors?" reads this table: the fake-quant inserter and
calibration on the PyTorch side (keyed by the op's torch name: a module class name such as "Conv2d", a
function name such as "layer_norm", or a tensor method such as "permute"), the ONNX QDQ builder and the
TFLite pass (keyed by ONNX op type / TFLite builtin name). A new operator is one `OpRule`. An op found in
no rule stays float, and the exporter lists it, so an unknown op can cost speed but never correctness.

Pure stdlib on purpose: the runtime and the converters read it without importing torch.

Fields of an OpRule:
- `kind`: "weighted" (conv/linear: weights quantized per output channel on `weight_axis`), "compute" (an
  integer kernel exists: its float inputs and output are quantized), "same_grid" (moves or selects values
  without changing them: reshape, transpose, max-pool, slice; it keeps its input's grid and gets no
  quantizer of its own), "shape" (computes on shapes or indices: never quantized, and whatever it feeds
  is not a quantization point), or "float" (runs in float; its inputs are dequantized, its output is
  quantized again only if an integer consumer needs it).
- `why`: one line, shown to users when an op stays float and in docs.
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("weighted", "compute", "same_grid", "shape", "float")


@dataclass(frozen=True)
class OpRule:
    kind: str
    why: str = ""
    weight_axis: int | None = None  # output-channel axis of the weight (weighted ops)
    activation_kind: str | None = None  # a weighted op whose weight is not a constant runs as this kind

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}")


# --- ONNX op types (the QDQ builder, calibration points, the float-op report) -------------------------
ONNX_OPS: dict[str, OpRule] = {
    "Conv": OpRule("weighted", "int8 conv kernels (QLinearConv)", weight_axis=0),
    # Linear layers become Gemm (onnx_float.linear_to_gemm): QGemm with per-channel weights and an int32
    # bias in one kernel; a MatMul left over keeps per-column weight scales (axis 1, QLinearMatMul)
    "Gemm": OpRule("weighted", "QGemm; weight axis from transB", weight_axis=0),
    "MatMul": OpRule(
        "weighted",
        "QLinearMatMul with per-column weight scales",
        weight_axis=1,
        activation_kind="float",
    ),
    "Add": OpRule("compute", "QLinearAdd"),
    "Mul": OpRule("compute", "QLinearMul"),
    "Concat": OpRule("compute", "QLinearConcat"),
    "GlobalAveragePool": OpRule("compute", "QLinearGlobalAveragePool"),
    "AveragePool": OpRule("compute", "QLinearAveragePool"),
    "Relu": OpRule("compute", "absorbed into the producer's output range"),
    "Clip": OpRule("compute", "absorbed into the producer's output range"),
    "Max": OpRule("compute", "integer max on one shared grid (PReLU rewrite)"),
    "MaxPool": OpRule("same_grid", "max commutes with a monotone quantization"),
    "Flatten": OpRule("same_grid", "moves values"),
    "Reshape": OpRule("same_grid", "moves values"),
    "Squeeze": OpRule("same_grid", "moves values"),
    "Unsqueeze": OpRule("same_grid", "moves values"),
    "Transpose": OpRule("same_grid", "moves values"),
    "Split": OpRule("same_grid", "moves values"),
    "Slice": OpRule("same_grid", "moves values"),
    "Gather": OpRule("same_grid", "selects values (on float data; on shapes it is shape arithmetic)"),
    "Expand": OpRule("same_grid", "repeats values"),
    "SpaceToDepth": OpRule("same_grid", "moves values"),
    "DepthToSpace": OpRule("same_grid", "moves values"),
    "Identity": OpRule("same_grid", "moves values"),
    "Shape": OpRule("shape", "integer shape arithmetic"),
    "Size": OpRule("shape", "integer shape arithmetic"),
    "ConstantOfShape": OpRule("shape", "builds a tensor from a shape"),
    "Range": OpRule("shape", "integer ranges"),
    "Cast": OpRule("shape", "dtype change"),
    "NonZero": OpRule("shape", "indices"),
    "PRelu": OpRule("float", "no int8 PRelu kernel in ORT; rewritten where an exact integer form exists"),
    "LayerNormalization": OpRule("float", "no int8 LayerNorm kernel in ORT; statistics need float"),
    "Softmax": OpRule("float", "exp/normalise in float (int8 softmax costs accuracy, measured)"),
    "Erf": OpRule("float", "GELU: no int8 kernel in ORT"),
    "Gelu": OpRule("float", "GELU: no int8 kernel in ORT"),
    "Div": OpRule("float", "no int8 Div kernel in ORT"),
    "Sqrt": OpRule("float", "no int8 kernel in ORT"),
    "Pow": OpRule("float", "no int8 kernel in ORT"),
    "ReduceL2": OpRule("float", "L2 normalisation (attention q/k): float statistics"),
    "ReduceMean": OpRule("float", "float statistics"),
    "Sigmoid": OpRule("float", "float"),
    "Tanh": OpRule("float", "float"),
    "Exp": OpRule("float", "float"),
    "Sub": OpRule("float", "no int8 Sub kernel in ORT"),
}

# --- PyTorch names (fake-quant insertion, calibration, bias correction) ----------------------------------
TORCH_OPS: dict[str, OpRule] = {
    "Conv2d": OpRule("weighted", "conv", weight_axis=0),
    "Linear": OpRule("weighted", "linear; channels on the last axis of its input", weight_axis=0),
    "add": OpRule("compute", "tensor + tensor"),
    "mul": OpRule("compute", "tensor * tensor"),
    "cat": OpRule("compute", "concat"),
    "flatten": OpRule("same_grid", "moves values"),
    "reshape": OpRule("same_grid", "moves values"),
    "view": OpRule("same_grid", "moves values"),
    "permute": OpRule("same_grid", "moves values"),
    "size": OpRule("shape", "shape arithmetic"),
    "getattr": OpRule("shape", "x.shape and friends"),
}


def onnx_rule(op_type: str) -> OpRule | None:
    """The rule for an ONNX op type, or None: the op stays float."""
    return ONNX_OPS.get(op_type)


def torch_rule(name: str) -> OpRule | None:
    """The rule for a torch module class / function / method name, or None: the op stays float."""
    return TORCH_OPS.get(name)
