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

# --- PyTorch names (fake-quant insertion, calibration, bias correction, the quant plan) --------------------
# Keyed by the op's torch name: a module class name (looked up along its MRO, so QuantLinear finds "Linear"),
# a function's __name__ (operator.add and torch.add are both "add") or a tensor method name. The quantizer
# decides from these rules *and* from the traced tensors' metadata: only floating-point tensors that depend
# on the model input ever get a quantizer, whatever the rule says (shapes, indices, constants never do).
# Placement: a quantizer on every float input of a "weighted"/"compute" op (one per tensor, placed at the
# op that produced it, looking through "same_grid" ops), and on the output of every such op after its
# "fused" activation. "float" ops read dequantized values and their outputs are quantized only where an
# integer op consumes them.


@dataclass(frozen=True)
class TorchOpRule(OpRule):
    channel_axis: int | None = None  # axis of the activation's channels for weighted ops (Linear: last)
    fused: bool = False  # an activation runtimes fuse into the producing conv/linear/add (one output range)
    int_output: bool = True  # the integer kernel writes integers (QLinearConv); False: it may write float


_MOVES = "moves values: keeps its input's grid"
_FUSED = "fused into the producing op's output range"
TORCH_OPS: dict[str, OpRule] = {
    # weighted: weights per output channel (axis 0 of the weight); channel_axis of the activations
    "Conv2d": TorchOpRule(
        "weighted", "int8 conv (QLinearConv: integer output)", weight_axis=0, channel_axis=1
    ),
    "Linear": TorchOpRule(
        "weighted",
        "int8 matmul, channels on the last axis of its input; float output allowed (MatMulIntegerToFloat)",
        weight_axis=0,
        channel_axis=-1,
        int_output=False,
    ),
    # integer kernels: inputs and output quantized (add/mul only for tensor (op) tensor, both computed
    # from the input; with a Python number or a parameter they stay float)
    "add": OpRule("compute", "tensor + tensor (QLinearAdd / int8 ADD)"),
    "mul": OpRule("compute", "tensor * tensor (QLinearMul / int8 MUL)"),
    "cat": OpRule("compute", "concat on one grid"),
    "AdaptiveAvgPool2d": OpRule("compute", "integer average pooling"),
    "AvgPool2d": OpRule("compute", "integer average pooling"),
    "adaptive_avg_pool2d": OpRule("compute", "integer average pooling"),
    "avg_pool2d": OpRule("compute", "integer average pooling"),
    "mean": OpRule("compute", "global average pooling only (spatial axes of NCHW); other reductions float"),
    # activations fused into their producer (one quantizer after them)
    "ReLU": TorchOpRule("compute", _FUSED, fused=True),
    "ReLU6": TorchOpRule("compute", _FUSED, fused=True),
    "relu": TorchOpRule("compute", _FUSED, fused=True),
    "relu_": TorchOpRule("compute", _FUSED, fused=True),
    "relu6": TorchOpRule("compute", _FUSED, fused=True),
    "LeakyReLU": TorchOpRule("compute", _FUSED, fused=True),
    "leaky_relu": TorchOpRule("compute", _FUSED, fused=True),
    "Hardswish": TorchOpRule("compute", _FUSED, fused=True),
    "hardswish": TorchOpRule("compute", _FUSED, fused=True),
    "PReLU": TorchOpRule(
        "compute",
        "fused: one range after it; the exporter picks an exact integer rewrite per slope",
        fused=True,
    ),
    # same grid: values only move (or a max picks one), so no quantizer of their own
    "flatten": OpRule("same_grid", _MOVES),
    "Flatten": OpRule("same_grid", _MOVES),
    "reshape": OpRule("same_grid", _MOVES),
    "view": OpRule("same_grid", _MOVES),
    "permute": OpRule("same_grid", _MOVES),
    "transpose": OpRule("same_grid", _MOVES),
    "contiguous": OpRule("same_grid", _MOVES),
    "squeeze": OpRule("same_grid", _MOVES),
    "unsqueeze": OpRule("same_grid", _MOVES),
    "chunk": OpRule("same_grid", _MOVES),
    "split": OpRule("same_grid", _MOVES),
    "unbind": OpRule("same_grid", _MOVES),
    "getitem": OpRule("same_grid", "indexing / slicing moves values"),
    "Dropout": OpRule("same_grid", "identity in eval mode"),
    "dropout": OpRule("same_grid", "identity in eval mode"),
    "Identity": OpRule("same_grid", "identity"),
    "MaxPool2d": OpRule("same_grid", "max commutes with a monotone quantization"),
    "max_pool2d": OpRule("same_grid", "max commutes with a monotone quantization"),
    # shape arithmetic: never quantized
    "size": OpRule("shape", "shape arithmetic"),
    "getattr": OpRule("shape", "x.shape, x.device and friends"),
    "dim": OpRule("shape", "shape arithmetic"),
    "numel": OpRule("shape", "shape arithmetic"),
    # float on purpose (measured on EdgeFace-XS, docs/compression.md): no int8 kernel, or int8 hurts
    "LayerNorm": OpRule(
        "float", "normalisation: statistics in float; its output is quantized for the Linear"
    ),
    "layer_norm": OpRule("float", "normalisation: statistics in float"),
    "GroupNorm": OpRule("float", "normalisation: statistics in float"),
    "GELU": OpRule("float", "non-linear; float between int8 Linear layers"),
    "gelu": OpRule("float", "non-linear; float between int8 Linear layers"),
    "softmax": OpRule("float", "attention weights in float"),
    "Softmax": OpRule("float", "attention weights in float"),
    "normalize": OpRule("float", "L2 normalisation in float"),
    "matmul": OpRule("float", "attention product (activation x activation)"),
    "bmm": OpRule("float", "attention product (activation x activation)"),
    "Sigmoid": OpRule("float", "non-linear"),
    "sigmoid": OpRule("float", "non-linear"),
    "SiLU": OpRule("float", "non-linear"),
    "silu": OpRule("float", "non-linear"),
    "Tanh": OpRule("float", "non-linear"),
    "truediv": OpRule("float", "division"),
    "div": OpRule("float", "division"),
    "BatchNorm1d": OpRule("float", "a BatchNorm that could not be folded into a linear"),
    "linear": OpRule("float", "functional F.linear (not an nn.Linear module): weights not quantizable"),
    "conv2d": OpRule("float", "functional F.conv2d (not an nn.Conv2d module): weights not quantizable"),
}


def onnx_rule(op_type: str) -> OpRule | None:
    """The rule for an ONNX op type, or None: the op stays float."""
    return ONNX_OPS.get(op_type)


def torch_rule(name: str) -> OpRule | None:
    """The rule for a torch module class / function / method name, or None: the op stays float."""
    return TORCH_OPS.get(name)


def torch_channel_axis(name: str) -> int | None:
    """Channel axis of a weighted torch op's activations (Conv2d: 1, Linear: -1), None for other ops."""
    rule = TORCH_OPS.get(name)
    return rule.channel_axis if isinstance(rule, TorchOpRule) else None


def torch_int_output(name: str) -> bool:
    """Whether the integer kernel of a torch op must write an integer output (all but Linear here)."""
    rule = TORCH_OPS.get(name)
    return not isinstance(rule, TorchOpRule) or rule.int_output


def torch_fused(name: str) -> bool:
    """Whether a torch activation is fused into its producer (one quantizer after both)."""
    rule = TORCH_OPS.get(name)
    return isinstance(rule, TorchOpRule) and rule.fused
