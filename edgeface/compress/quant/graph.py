"""What each node of a traced model really computes, read from one example forward pass.

Deciding "is this a tensor merge?" from node patterns alone put activation quantizers on `H * W` products of
Python ints. Here every node is run once on an example input (fx.Interpreter) and keeps what it produced:
whether its value is a floating-point tensor, its shape, and whether it depends on the model input at all
(`data`): `x.shape`, `x.size(0)`, `H * W`, `torch.zeros(shape)` and everything computed only from them or
from parameters is not data, so it is never quantized (an exporter folds it to a constant). Only nodes
that are data *and* float tensors can ever hold an activation quantizer.

The same pass tells which axis holds a weighted layer's channels (a Linear on an NHWC tensor: the last), and
locates the node that fails when a user model does not run (`locate_failure`), so that errors name a layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from edgeface.errors import ModelError
from edgeface.quant_ops import OpRule, torch_rule

INFO_KEY = "edgeface_info"


@dataclass(frozen=True)
class NodeInfo:
    op: str  # table key: module class name, function __name__ or method name
    data: bool  # the value depends on the model input (not only on shapes, constants or parameters)
    float_tensor: bool  # the value is one floating-point torch.Tensor
    shape: tuple[int, ...] | None  # of that tensor
    tensors: bool  # the value is or contains tensors (tuples from chunk/unbind count)


def op_name(gm: nn.Module, node: fx.Node) -> str:
    """The key of `node` in the per-operator table (edgeface.quant_ops.TORCH_OPS)."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        for cls in type(module).__mro__:  # QuantLinear -> "Linear", ReLU6 -> "ReLU6"
            if torch_rule(cls.__name__) is not None:
                return cls.__name__
        return type(module).__name__
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return {"iadd": "add", "imul": "mul", "matmul": "matmul"}.get(name, name)
    if node.op == "call_method":
        return str(node.target)
    return node.op  # placeholder, get_attr, output


def rule_of(gm: nn.Module, node: fx.Node) -> OpRule | None:
    return torch_rule(op_name(gm, node))


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, list | tuple):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False


def input_nodes(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.infos: dict[str, NodeInfo] = {}

    def run_node(self, n: fx.Node) -> Any:
        try:
            value = super().run_node(n)
        except Exception as e:
            raise _NodeFailure(n, e) from e
        if n.op == "placeholder":
            data = isinstance(value, torch.Tensor)
        elif n.op == "get_attr":
            data = False
        else:
            data = any(
                self.infos[a.name].data and self.infos[a.name].tensors
                for a in input_nodes(n)
                if a.name in self.infos
            )
        is_tensor = isinstance(value, torch.Tensor)
        self.infos[n.name] = NodeInfo(
            op=op_name(self.module, n),
            data=data and _has_tensor(value),
            float_tensor=is_tensor and value.is_floating_point(),
            shape=tuple(value.shape) if is_tensor else None,
            tensors=_has_tensor(value),
        )
        return value


class _NodeFailure(Exception):
    def __init__(self, node: fx.Node, error: Exception) -> None:
        super().__init__(str(error))
        self.node = node
        self.error = error


def _describe(gm: nn.Module, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"layer '{node.target}' ({op_name(gm, node)})"
    return f"op '{op_name(gm, node)}' at graph node '{node.name}'"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def analyze(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, NodeInfo]:
    """Run `gm` once on `example`; {node name: NodeInfo}, also stored in node.meta[INFO_KEY]."""
    rec = _Recorder(gm)
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            rec.run(example)
    except _NodeFailure as f:
        raise ModelError(
            f"the traced model fails at {_describe(gm, f.node)} on a {tuple(example.shape)} input "
            f"({type(f.error).__name__}: {_first_line(f.error)}); quantization runs it on batches, so its "
            "forward must accept any batch size at the spec's input_size (give --spec if that is wrong)"
        ) from None
    finally:
        gm.train(was)
    for node in gm.graph.nodes:
        if node.name in rec.infos:
            node.meta[INFO_KEY] = rec.infos[node.name]
    return rec.infos


def info(node: fx.Node) -> NodeInfo:
    found = node.meta.get(INFO_KEY)
    if found is None:
        raise ModelError(f"internal: graph node '{node.name}' was not analysed (run analyze first)")
    return found  # type: ignore[no-any-return]


def is_float_data(node: Any) -> bool:
    """A floating-point tensor computed from the model input: the only kind of value ever quantized."""
    if not isinstance(node, fx.Node):
        return False
    i = node.meta.get(INFO_KEY)
    return i is not None and i.data and i.float_tensor


def locate_failure(gm: fx.GraphModule, x: torch.Tensor, error: BaseException) -> ModelError:
    """Re-run one batch node by node to name the layer where a forward pass failed."""
    try:
        with torch.no_grad():
            _Recorder(gm).run(x)
    except _NodeFailure as f:
        node = f.node
        target = node.target if node.op == "call_module" else node.name
        owner = str(node.target).rsplit(".", 1)[0] if node.op == "call_module" else node.name
        return ModelError(
            f"quantized model fails at {_describe(gm, node)} "
            f"({type(f.error).__name__}: {_first_line(f.error)}); try --keep-float {owner or target}"
        )
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass
    return ModelError(
        f"quantized model fails ({type(error).__name__}: {_first_line(error)}); "
        "try --keep-float on the layer named in `edgeface --debug quantize ...`"
    )


def channel_axis(gm: nn.Module, node: fx.Node) -> int | None:
    """Non-negative axis of a weighted node's output channels, from the table and the traced shape."""
    from edgeface.quant_ops import torch_channel_axis

    axis = torch_channel_axis(op_name(gm, node))
    i = node.meta.get(INFO_KEY)
    if axis is None or i is None or i.shape is None:
        return axis
    return axis % len(i.shape)
