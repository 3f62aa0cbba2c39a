"""PyTorch -> a clean float ONNX graph that the QDQ builder can quantize operator by operator.

The TorchScript exporter (dynamo=False) folds Conv+BatchNorm in eval mode and names every node after the
module that produced it (`/features/features.3/conv/conv.0/Conv`), which is how a quantization plan keyed by
module name finds its layer. What it leaves behind is normalised here so that every weighted layer is a Conv:
a `Flatten -> MatMul/Gemm [-> BatchNormalization]` head becomes `Conv 1x1 -> Flatten`, which ORT and the int8
kernels treat like every other pointwise conv, and the Flatten moves to the very end where it can run on int8.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

OPSET = 17


def export_float_onnx(model: Any, input_size: tuple[int, int], opset: int = OPSET) -> Any:
    """An eval-mode nn.Module as an in-memory ModelProto (NCHW float input 'input', output 'embedding')."""
    import onnx
    import torch

    h, w = input_size
    buf = io.BytesIO()
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, h, w),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    return normalize_graph(proto)


def _initializers(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def normalize_graph(proto: Any) -> Any:
    """Inline Constants, drop Identity, turn linear heads into 1x1 convs, fold leftover BatchNorms."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = _initializers(graph)
    rename: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
        if node.op_type == "Constant":
            inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            continue
        if node.op_type == "Identity":
            rename[node.output[0]] = node.input[0]
            continue
        nodes.append(node)
    for out in graph.output:
        if out.name in rename:  # an Identity feeding the graph output: keep the output's name
            src = rename[out.name]
            for n in nodes:
                n.output[:] = [out.name if o == src else o for o in n.output]
                n.input[:] = [out.name if i == src else i for i in n.input]
    shapes = _static_shapes(proto)
    nodes = _linear_head_to_conv(nodes, inits, shapes)
    nodes = _fold_batchnorm(nodes, inits)
    nodes = _batchnorm_to_conv(nodes, inits)
    used = {i for n in nodes for i in n.input}
    new_graph = helper.make_graph(
        nodes,
        graph.name,
        list(graph.input),
        list(graph.output),
        [numpy_helper.from_array(v, k) for k, v in inits.items() if k in used],
    )
    out = helper.make_model(new_graph, opset_imports=list(proto.opset_import), producer_name="edgeface")
    out.ir_version = proto.ir_version
    onnx.checker.check_model(out)
    return out


def _consumers(nodes: list[Any], name: str) -> list[Any]:
    return [n for n in nodes if name in n.input]


def _static_shapes(proto: Any) -> dict[str, list[int]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shapes are an optimisation aid here, never a requirement
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    return shapes


def _linear_head_to_conv(
    nodes: list[Any], inits: dict[str, np.ndarray], shapes: dict[str, list[int]]
) -> list[Any]:
    """`Flatten(x[N,C,H,W]) -> MatMul(W[CHW,D]) | Gemm` becomes `Conv(W^T as [D,C,H,W]) -> Flatten`.

    A face head is either a GDC (x is [N,C,1,1]) or IResNet's flatten + fc over [N,512,7,7]: both are one
    conv whose kernel covers the whole map, which quantizes per output channel like every other conv.
    """
    from onnx import helper

    out: list[Any] = list(nodes)
    for flat in [n for n in nodes if n.op_type == "Flatten"]:
        users = _consumers(out, flat.output[0])
        dims = shapes.get(flat.input[0], [])
        if len(users) != 1 or len(dims) != 4 or min(dims[1:]) < 1:
            continue
        c, h, w = dims[1:]
        lin = users[0]
        if lin.op_type == "MatMul" and lin.input[1] in inits:
            weight = inits[lin.input[1]].T  # [D, C]
            bias = None
        elif lin.op_type == "Gemm" and lin.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in lin.attribute}
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            weight = inits[lin.input[1]] if attrs.get("transB", 0) else inits[lin.input[1]].T
            bias = inits[lin.input[2]] if len(lin.input) > 2 and lin.input[2] else None
        else:
            continue
        if weight.shape[1] != c * h * w:
            continue
        wname = lin.name.strip("/").replace("/", ".") + ".conv_weight"
        inits[wname] = np.ascontiguousarray(weight.reshape(-1, c, h, w).astype(np.float32))
        conv_inputs = [flat.input[0], wname]
        if bias is not None:
            bname = lin.name.strip("/").replace("/", ".") + ".conv_bias"
            inits[bname] = bias.astype(np.float32)
            conv_inputs.append(bname)
        conv_out = lin.output[0] + "_nchw"
        conv = helper.make_node("Conv", conv_inputs, [conv_out], name=lin.name)
        new_flat = helper.make_node("Flatten", [conv_out], [lin.output[0]], name=flat.name, axis=1)
        idx = out.index(lin)
        out[idx] = conv
        out.insert(idx + 1, new_flat)
        out.remove(flat)
        # a BatchNormalization after the (now) Flatten moves before it, onto the conv, to be folded
        for bn in _consumers(out, lin.output[0]):
            if bn.op_type == "BatchNormalization":
                final = bn.output[0]
                bn.input[0] = conv_out
                bn.output[0] = conv_out + "_bn"
                new_flat.input[0] = conv_out + "_bn"
                new_flat.output[0] = final
                out.remove(bn)
                out.insert(out.index(new_flat), bn)
    return out


def _batchnorm_to_conv(nodes: list[Any], inits: dict[str, np.ndarray]) -> list[Any]:
    """A BatchNormalization that could not be folded (it precedes a zero-padded conv, as IResNet's bn1 and
    bn2 do) becomes a 1x1 depthwise conv with bias: the same affine map, but one an int8 runtime runs."""
    from onnx import helper

    out = []
    for n in nodes:
        if n.op_type != "BatchNormalization" or not all(i in inits for i in n.input[1:5]):
            out.append(n)
            continue
        eps = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (inits[i].astype(np.float64) for i in n.input[1:5])
        k = gamma / np.sqrt(var + eps)
        base = n.name.strip("/").replace("/", ".")
        inits[base + ".bn_weight"] = k.reshape(-1, 1, 1, 1).astype(np.float32)
        inits[base + ".bn_bias"] = (beta - mean * k).astype(np.float32)
        out.append(
            helper.make_node(
                "Conv",
                [n.input[0], base + ".bn_weight", base + ".bn_bias"],
                list(n.output),
                name=n.name,
                group=int(k.size),
            )
        )
    return out


def _fold_batchnorm(nodes: list[Any], inits: dict[str, np.ndarray]) -> list[Any]:
    """Fold a BatchNormalization that follows a Conv (whose only consumer it is) into the conv."""
    from onnx import helper

    producers = {o: n for n in nodes for o in n.output}
    out = list(nodes)
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or len(_consumers(out, conv.output[0])) != 1:
            continue
        eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (inits[i].astype(np.float64) for i in bn.input[1:5])
        k = gamma / np.sqrt(var + eps)
        w = inits[conv.input[1]].astype(np.float64)
        b = inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 else np.zeros(w.shape[0])
        wname, bname = conv.input[1] + "_bnfold", conv.input[1] + "_bnfold_bias"
        inits[wname] = (w * k.reshape(-1, 1, 1, 1)).astype(np.float32)
        inits[bname] = ((b - mean) * k + beta).astype(np.float32)
        conv.input[:] = [conv.input[0], wname, bname]
        conv.output[0] = bn.output[0]
        out.remove(bn)
    return out


PRELU_MAX = "/prelu_max"  # name suffix of the Max that replaces a PRelu (qdq.py keys on it)


def prelu_as_max(proto: Any) -> Any:
    """PRelu(x, a) -> Max(x, DepthwiseConv1x1(x, a)) for layers whose slopes all lie in [0, 1].

    Exact in float (x > 0: x >= a x; x < 0: a x >= x). Its point is the integer graph: ORT has no int8 PRelu,
    so DQ -> PRelu -> Q runs in float around every layer, while the slope conv quantized onto x's own grid
    becomes a QLinearConv and the Max runs directly on uint8 (same scale and zero point on both inputs, and
    the mapping to integers is monotone, so max commutes with it). Two integer passes replace three float
    ones.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = []
    for n in m.graph.node:
        slope = inits.get(n.input[1]) if n.op_type == "PRelu" and len(n.input) > 1 else None
        if slope is None or slope.size < 1 or slope.min() < 0 or slope.max() > 1:
            nodes.append(n)
            continue
        c = slope.size
        wname = n.name.strip("/").replace("/", ".") + ".slope_weight"
        m.graph.initializer.append(
            numpy_helper.from_array(slope.reshape(c, 1, 1, 1).astype(np.float32), wname)
        )
        ax = n.output[0] + "_slope"
        nodes.append(
            helper.make_node("Conv", [n.input[0], wname], [ax], name=n.name + "/slope_conv", group=c)
        )
        nodes.append(helper.make_node("Max", [n.input[0], ax], list(n.output), name=n.name + PRELU_MAX))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m
