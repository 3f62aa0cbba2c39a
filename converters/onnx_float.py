"""PyTorch -> a clean float ONNX graph that the QDQ builder can quantize operator by operator.

The TorchScript exporter (dynamo=False) folds Conv+BatchNorm in eval mode and names every node after the
module that produced it (`/features/features.3/conv/conv.0/Conv`), which is how a quantization plan keyed by
module name finds its layer. What it leaves behind is normalised here so that every weighted layer is a Conv:
a `Flatten -> MatMul/Gemm [-> BatchNormalization]` head becomes `Conv 1x1 -> Flatten`, which ORT and the int8
kernels treat like every other pointwise conv, and the Flatten moves to the very end where it can run on int8.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edgeface.quiet import native_silent

OPSET = 17


SHAPE_SOURCES = ("Shape", "Size")  # ops that read a tensor's shape, not its values
FOLD_MAX_ELEMENTS = 1 << 22  # a folded constant larger than this (an Expand, say) stays a node


def export_float_onnx(model: Any, input_size: tuple[int, int], opset: int = OPSET, channels: int = 3) -> Any:
    """An eval-mode nn.Module as an in-memory ModelProto (NCHW float input 'input', output 'embedding').

    The batch axis is dynamic unless the model's forward does arithmetic on its input's shape
    (`x.view(x.size(0), -1)`, `B, C, H, W = x.shape`): then the graph is exported for a static batch of 1
    and every shape computation is folded to a constant (`fold_constants`), which leaves no integer
    subgraph for the quantizer to trip on and nothing for the runtime to recompute per call.
    """
    try:
        proto = _torch_to_onnx(model, input_size, opset, dynamic=True, channels=channels)
    except Exception:
        # Shape arithmetic that feeds an op attribute (`h, w = x.shape[-2:]; F.avg_pool2d(x, (h, w))`)
        # cannot be exported with a symbolic batch at all; with a static input it is a constant.
        proto = None
    if proto is None or any(n.op_type in SHAPE_SOURCES for n in proto.graph.node):
        proto = _torch_to_onnx(model, input_size, opset, dynamic=False, channels=channels)
    return normalize_graph(proto)


def pooling_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of adaptive average pooling along one axis: row i averages the inputs
    [floor(i n_in / n_out), ceil((i + 1) n_in / n_out)), the windows torch's adaptive_avg_pool uses."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def _adaptive_avg_pool2d(g: Any, x: Any, output_size: Any) -> Any:
    """ONNX symbolic of adaptive_avg_pool2d for any output size of a static map.

    torch's own refuses an output size that does not divide the input ("not factor of input size": a
    (7, 7) pool on the 7x6 map of a 112x96 face, a (4, 4) pool on 14x14), because windows then differ in
    size and overlap. Such a pool is a fixed linear map per axis: y = P_h x P_w^T, two MatMuls with
    constant matrices, exact. Uniform windows keep the usual GlobalAveragePool / AveragePool. Both
    constants are MatMul's first input (the W axis is pooled between two Transposes): a constant second
    input is how a Linear layer looks to the quantizer and to a checkpoint's layer matching.
    """
    from torch.onnx import symbolic_helper as sh

    out = sh._parse_arg(output_size, "is")
    sizes = sh._get_tensor_sizes(x) or []
    if list(out) == [1, 1]:
        return g.op("GlobalAveragePool", x)
    if len(sizes) != 4 or sizes[2] is None or sizes[3] is None:
        return sh._unimplemented("adaptive_avg_pool2d", "input size not accessible", x)
    (h, w), (oh, ow) = sizes[2:], out
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return g.op("AveragePool", x, kernel_shape_i=k, strides_i=k)
    import torch

    p_w = g.op("Constant", value_t=torch.from_numpy(pooling_matrix(w, ow)))
    p_h = g.op("Constant", value_t=torch.from_numpy(pooling_matrix(h, oh)))
    x = g.op("Transpose", x, perm_i=[0, 1, 3, 2])  # N, C, W, H
    x = g.op("Transpose", g.op("MatMul", p_w, x), perm_i=[0, 1, 3, 2])  # N, C, H, ow
    return g.op("MatMul", p_h, x)


def _torch_to_onnx(
    model: Any, input_size: tuple[int, int], opset: int, dynamic: bool, channels: int = 3
) -> Any:
    import onnx
    import torch

    h, w = input_size
    buf = io.BytesIO()
    model.eval()
    # The TorchScript exporter is deprecated, but it is the one that folds Conv+BN and names every node after
    # its module (what a quantization plan keyed by module name needs; module docstring); its deprecation
    # warning is about our choice, not the user's model, so it is not shown to them.
    # torch's TorchScript exporter always dumps its whole IR graph to stdout when it fails (its log switch
    # tests a function object, so it is always on): tens of lines that bury the one-line error; -v keeps it.
    with torch.no_grad(), warnings.catch_warnings(), native_silent(1), _symbolics(opset):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(1, channels, h, w),),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            do_constant_folding=True,
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}} if dynamic else None,
        )
    return onnx.load_from_string(buf.getvalue())


@contextmanager
def _symbolics(opset: int) -> Iterator[None]:
    """Our ONNX symbolics for ops torch's TorchScript exporter refuses in forms face models use, in force
    for one export (the registry is global; it is restored after).

    Also off for the export: the fused "fast path" of nn.TransformerEncoderLayer / nn.MultiheadAttention
    that eval mode takes without grad (aten::_transformer_encoder_layer_fwd, _native_multi_head_attention):
    it has no ONNX symbolic, while the module's plain ops are the same computation.
    """
    import torch

    name = "aten::adaptive_avg_pool2d"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.onnx.register_custom_op_symbolic(name, _adaptive_avg_pool2d, opset)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        torch.onnx.unregister_custom_op_symbolic(name, opset)


def static_batch(proto: Any) -> bool:
    """True when the graph was exported for a fixed batch of 1 (see export_float_onnx)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def fold_constants(nodes: list[Any], inits: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> list[Any]:
    """Evaluate every node whose inputs are all constants, and every Shape/Size of a tensor whose shape is
    static, into initializers (in graph order, so whole chains fold in one pass).

    What remains computes on the input's values only. Random ops and results above FOLD_MAX_ELEMENTS are
    kept as nodes.
    """
    from onnx.reference import ReferenceEvaluator

    out = []
    for node in nodes:
        value = None
        if node.op_type in SHAPE_SOURCES and node.domain in ("", "ai.onnx"):
            dims = shapes.get(node.input[0])
            if dims and min(dims) >= 1:
                attrs = {a.name: a.i for a in node.attribute}
                if node.op_type == "Size":
                    value = np.array(int(np.prod(dims)), np.int64)
                else:
                    value = np.array(dims[attrs.get("start", 0) : attrs.get("end", len(dims))], np.int64)
        elif (
            node.domain in ("", "ai.onnx")
            and "Random" not in node.op_type
            and all((not i) or i in inits for i in node.input)
            and node.input
        ):
            try:
                feeds = {i: inits[i] for i in node.input if i}
                results = ReferenceEvaluator(node).run(None, feeds)
            except Exception:  # an op the reference evaluator lacks: leave it to the runtime
                results = None
            if results is not None and all(np.asarray(r).size <= FOLD_MAX_ELEMENTS for r in results):
                for name, r in zip(node.output, results, strict=True):
                    inits[name] = np.asarray(r)
                continue
        if value is not None:
            inits[node.output[0]] = value
            continue
        out.append(node)
    return out


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
    nodes = _fold_all(proto, nodes, inits)
    shapes = _static_shapes(_rebuilt(proto, nodes, inits))
    nodes = _linear_head_to_conv(nodes, inits, shapes)
    nodes = linear_to_gemm(nodes, inits, shapes)
    nodes = fold_channel_scale(nodes, inits)
    nodes = _fold_batchnorm(nodes, inits)
    nodes = _batchnorm_to_conv(nodes, inits, _static_shapes(_rebuilt(proto, nodes, inits)))
    used = {i for n in nodes for i in n.input}
    new_graph = helper.make_graph(
        nodes,
        graph.name,
        list(graph.input),
        list(graph.output),
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items() if k in used],
    )
    out = helper.make_model(new_graph, opset_imports=list(proto.opset_import), producer_name="edgeface")
    out.ir_version = proto.ir_version
    onnx.checker.check_model(out)
    return out


def _rebuilt(proto: Any, nodes: list[Any], inits: dict[str, np.ndarray]) -> Any:
    from onnx import helper, numpy_helper

    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(
        nodes,
        proto.graph.name,
        list(proto.graph.input),
        list(proto.graph.output),
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items() if k in used],
    )
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), producer_name="edgeface")
    model.ir_version = proto.ir_version
    return model


def _fold_all(proto: Any, nodes: list[Any], inits: dict[str, np.ndarray]) -> list[Any]:
    """fold_constants until nothing changes (shape inference sees more once shapes become constants)."""
    for _ in range(4):
        before = len(nodes)
        nodes = fold_constants(nodes, inits, _static_shapes(_rebuilt(proto, nodes, inits)))
        if len(nodes) == before:
            break
    return nodes


def _consumers(nodes: list[Any], name: str) -> list[Any]:
    return [n for n in nodes if name in n.input]


def _static_shapes(proto: Any) -> dict[str, list[int]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception:  # shapes are an optimisation aid here, never a requirement
        return {}
    shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
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
    for flat in [n for n in nodes if n.op_type in ("Flatten", "Reshape")]:
        users = _consumers(out, flat.output[0])
        dims = shapes.get(flat.input[0], [])
        if len(users) != 1 or len(dims) != 4 or min(dims[1:]) < 1:
            continue
        if flat.op_type == "Reshape":  # x.view(x.size(0), -1) of a static-batch graph: a flatten too
            target = shapes.get(flat.output[0], [])
            if len(target) != 2 or target[1] != dims[1] * dims[2] * dims[3]:
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


def linear_to_gemm(nodes: list[Any], inits: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> list[Any]:
    """`MatMul(x[..., K], W[K, M]) [+ b]` (a Linear on channels-last tokens) becomes
    `Reshape(x, [-1, K]) -> Gemm(W^T, b, transB=1) -> Reshape(back)`, the form ORT itself fuses in float.

    In the integer graph that is one QGemm with per-output-channel weight scales (axis 0, like a conv)
    and an int32 bias, where a MatMul keeps its bias as a separate float Add (measured in docs/export.md).
    Needs the static shape of x; without it the MatMul stays (and is quantized per column).
    """
    from onnx import helper

    out = list(nodes)
    for mm in [n for n in nodes if n.op_type == "MatMul"]:
        if mm.input[1] not in inits or inits[mm.input[1]].ndim != 2:
            continue
        dims = shapes.get(mm.input[0], [])
        w = inits[mm.input[1]]
        if not dims or min(dims) < 1 or dims[-1] != w.shape[0]:
            continue
        base = mm.name.strip("/").replace("/", ".")
        users = _consumers(out, mm.output[0])
        add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        bias = None
        if add is not None:
            other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
            b = inits.get(other)
            if b is not None and b.size == w.shape[1] and b.shape[-1] == w.shape[1]:
                bias = b.reshape(-1)
            else:
                add = None
        final = add.output[0] if add is not None else mm.output[0]
        inits[base + ".gemm_weight"] = np.ascontiguousarray(w.T.astype(np.float32))
        inits[base + ".in_shape"] = np.array([-1, w.shape[0]], np.int64)
        inits[base + ".out_shape"] = np.array([*dims[:-1], w.shape[1]], np.int64)
        gemm_in = [mm.output[0] + "_2d_in", base + ".gemm_weight"]
        if bias is not None:
            inits[base + ".gemm_bias"] = bias.astype(np.float32)
            gemm_in.append(base + ".gemm_bias")
        flat = dims[:-1] == [] or len(dims) == 2
        new = []
        if flat:
            gemm_in[0] = mm.input[0]
            new.append(helper.make_node("Gemm", gemm_in, [final], name=mm.name, transB=1))
        else:
            new.append(
                helper.make_node(
                    "Reshape",
                    [mm.input[0], base + ".in_shape"],
                    [gemm_in[0]],
                    name=mm.name + "/to_2d",
                )
            )
            new.append(helper.make_node("Gemm", gemm_in, [mm.output[0] + "_2d"], name=mm.name, transB=1))
            new.append(
                helper.make_node(
                    "Reshape",
                    [mm.output[0] + "_2d", base + ".out_shape"],
                    [final],
                    name=mm.name + "/from_2d",
                )
            )
        i = out.index(mm)
        out[i : i + 1] = new
        if add is not None:
            out.remove(add)
    return out


def fold_channel_scale(nodes: list[Any], inits: dict[str, np.ndarray]) -> list[Any]:
    """A Mul by a constant per-channel vector right after a Gemm/Conv (layer-scale `gamma` of ConvNeXt and
    EdgeNeXt blocks, through the Gemm's back-reshape) is folded into that layer's weights and bias: exact,
    and one elementwise pass fewer on the integer graph."""
    producers = {o: n for n in nodes for o in n.output}
    out = list(nodes)
    for mul in [n for n in nodes if n.op_type == "Mul"]:
        const = [i for i in mul.input if i in inits]
        act = [i for i in mul.input if i not in inits]
        if len(const) != 1 or len(act) != 1:
            continue
        g = inits[const[0]]
        src = producers.get(act[0])
        via = None
        if src is not None and src.op_type == "Reshape" and src.name.endswith("/from_2d"):
            via, src = src, producers.get(src.input[0])
        if src is None or src.op_type not in ("Gemm", "Conv") or src.input[1] not in inits:
            continue
        if len(_consumers(out, src.output[0])) != 1 or (via and len(_consumers(out, via.output[0])) != 1):
            continue
        w = inits[src.input[1]]
        m = w.shape[0]
        if src.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in src.attribute)
            if not trans_b or g.size != m or g.shape[-1] != m:
                continue  # not a per-output-channel vector on the last axis
        elif g.size != m or g.ndim < 3 or g.reshape(-1).shape[0] != g.shape[-3]:
            continue  # conv: a [C, 1, 1] vector
        gv = g.reshape(-1).astype(np.float64)
        wname = src.input[1] + "_scaled"
        inits[wname] = (w * gv.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        src.input[1] = wname
        if len(src.input) > 2 and src.input[2]:
            bname = src.input[2] + "_scaled"
            inits[bname] = (inits[src.input[2]] * gv).astype(np.float32)
            src.input[2] = bname
        last = via if via is not None else src
        last.output[0] = mul.output[0]
        out.remove(mul)
    return out


def _batchnorm_to_conv(
    nodes: list[Any], inits: dict[str, np.ndarray], shapes: dict[str, list[int]] | None = None
) -> list[Any]:
    """A BatchNormalization that could not be folded (it precedes a zero-padded conv, as IResNet's bn1 and
    bn2 do) becomes a 1x1 depthwise conv with bias: the same affine map, but one an int8 runtime runs.
    Only on feature maps: a BatchNorm1d on a [N, C] vector (before a head's Linear) stays as it is, a
    Conv needs a 4-D input."""
    from onnx import helper

    shapes = shapes or {}
    out = []
    for n in nodes:
        rank = len(shapes.get(n.input[0], [0, 0, 0, 0]))
        if n.op_type != "BatchNormalization" or rank != 4 or not all(i in inits for i in n.input[1:5]):
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


def _fold_batchnorm_into_gemm(bn: Any, gemm: Any, inits: dict[str, np.ndarray]) -> bool:
    """Fold a BatchNorm1d that follows a Linear left as a Gemm (its input is not a flattened feature map,
    e.g. a concat of pooled features) into the Gemm's weights and bias: exact. False when the Gemm is not
    a plain `A @ B (+ C)` with constant B and C, and nothing is changed."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return False
    if gemm.input[1] not in inits or (len(gemm.input) > 2 and gemm.input[2] and gemm.input[2] not in inits):
        return False
    if not all(i in inits for i in bn.input[1:5]):
        return False
    eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
    gamma, beta, mean, var = (inits[i].astype(np.float64) for i in bn.input[1:5])
    k = gamma / np.sqrt(var + eps)
    w = inits[gemm.input[1]].astype(np.float64)
    trans_b = bool(attrs.get("transB", 0))
    if (w.shape[0] if trans_b else w.shape[1]) != k.size:
        return False
    has_bias = len(gemm.input) > 2 and bool(gemm.input[2])
    b = inits[gemm.input[2]].astype(np.float64) if has_bias else np.zeros(k.size)
    if b.size != k.size:
        return False
    wname, bname = gemm.input[1] + "_bnfold", gemm.input[1] + "_bnfold_bias"
    inits[wname] = (w * (k[:, None] if trans_b else k[None, :])).astype(np.float32)
    inits[bname] = ((b.reshape(-1) - mean) * k + beta).astype(np.float32)
    gemm.input[:] = [gemm.input[0], wname, bname]
    gemm.output[0] = bn.output[0]
    return True


def _fold_batchnorm(nodes: list[Any], inits: dict[str, np.ndarray]) -> list[Any]:
    """Fold a BatchNormalization that follows a Conv (whose only consumer it is) into the conv."""
    from onnx import helper

    producers = {o: n for n in nodes for o in n.output}
    out = list(nodes)
    for bn in [n for n in nodes if n.op_type == "BatchNormalization"]:
        conv = producers.get(bn.input[0])
        if conv is None or len(_consumers(out, conv.output[0])) != 1:
            continue
        if conv.op_type == "Gemm":
            if _fold_batchnorm_into_gemm(bn, conv, inits):
                out.remove(bn)
            continue
        if conv.op_type != "Conv":
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
PRELU_RELU = "/prelu_relu"  # the Relu of the any-slope form, which runs on its input's codes


def prelu_as_max(proto: Any, any_slope: bool = False) -> Any:
    """Rewrite PRelu(x, a) into forms an integer runtime runs, exact in float, chosen per layer.

    - every slope <= 1 (negative ones included): Max(x, DepthwiseConv1x1(x, a)). Exact (a <= 1: x > 0 gives
      a x <= x, x < 0 gives a x >= x). In the integer graph x, a x and the Max share one grid that covers
      both x's range and the PReLU's output range (qdq.prelu_ranges), so the slope conv is a QLinearConv
      that requantizes once onto it and the Max runs directly on uint8 (max commutes with a monotone
      quantization): one rounding, as for a plain activation.
    - slopes above 1 on some channels: min(y, a y) is PReLU there, and -max(-y, a (-y)) = min(y, a y). When
      x comes from a Conv read by nothing else and y is read only by Convs, those channels are negated in the
      producing conv's weights and bias and again in the consumers' input weights (`_flip_channels`), so the
      single Max form holds for the whole layer. Exact in float, nothing added at run time.
    - otherwise, with `any_slope`: a x + (1 - a) relu(x) as DepthwiseConv1x1(x, a) +
      DepthwiseConv1x1(relu(x), 1 - a), exact for every slope but three quantization steps. Without
      `any_slope` (fp32 graphs) such a layer keeps PRelu, one op being cheaper there.
    The Max form is used in every precision (ORT's fp32 PRelu kernel is slower, docs/speed.md), so int8
    speed-ups are measured against the faster fp32 graph.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    nodes = []

    def slope_conv(src: str, weights: np.ndarray, name: str, out: str) -> Any:
        c = weights.size
        wname = name.strip("/").replace("/", ".") + ".weight"
        m.graph.initializer.append(
            numpy_helper.from_array(weights.reshape(c, 1, 1, 1).astype(np.float32), wname)
        )
        return helper.make_node("Conv", [src, wname], [out], name=name, group=c)

    for n in m.graph.node:
        slope = inits.get(n.input[1]) if n.op_type == "PRelu" and len(n.input) > 1 else None
        if slope is None or slope.size < 2:
            nodes.append(n)
            continue
        slope = slope.reshape(-1).astype(np.float64)
        x, y = n.input[0], n.output[0]
        if slope.max() <= 1 or _flip_channels(m, inits, n, slope > 1):
            nodes.append(slope_conv(x, slope, n.name + "/slope_conv", y + "_slope"))
            nodes.append(helper.make_node("Max", [x, y + "_slope"], [y], name=n.name + PRELU_MAX))
        elif any_slope:
            nodes.append(slope_conv(x, slope, n.name + "/slope_conv", y + "_ax"))
            nodes.append(helper.make_node("Relu", [x], [y + "_relu"], name=n.name + PRELU_RELU))
            nodes.append(slope_conv(y + "_relu", 1.0 - slope, n.name + "/relu_conv", y + "_brelu"))
            nodes.append(helper.make_node("Add", [y + "_ax", y + "_brelu"], [y], name=n.name + "/prelu_add"))
        else:
            nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]  # weights a channel flip replaced
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m


def _flip_channels(m: Any, inits: dict[str, np.ndarray], prelu: Any, flip: np.ndarray) -> bool:
    """Negate the `flip` channels of a PRelu's input at its producing Conv and of its output at every
    consuming Conv (new initializers, the originals may be shared). False, and nothing changed, unless the
    producer is a Conv with constant weights read only by this PRelu, and every reader of the output is a
    Conv with constant weights reading it as its data input (neither tensor a graph output)."""
    from onnx import helper, numpy_helper

    graph = m.graph
    x, y = prelu.input[0], prelu.output[0]
    outs = {o.name for o in graph.output}
    producer = next((n for n in graph.node if x in n.output), None)
    readers_x = [n for n in graph.node if x in n.input]
    readers_y = [n for n in graph.node if y in n.input]
    convs = [producer, *readers_y]
    if (
        x in outs
        or y in outs
        or producer is None
        or len(readers_x) != 1
        or not readers_y
        or any(c.op_type != "Conv" or len(c.input) < 2 or c.input[1] not in inits for c in convs)
        or any(list(c.input).index(y) != 0 or list(c.input).count(y) != 1 for c in readers_y)
        or any(len(c.input) > 2 and c.input[2] and c.input[2] not in inits for c in convs)
    ):
        return False
    sign = np.where(flip, -1.0, 1.0)

    def replace(node: Any, k: int, value: np.ndarray) -> None:
        name = f"{node.input[k]}_flip_{prelu.name.strip('/').replace('/', '.')}"
        inits[name] = value.astype(np.float32)
        graph.initializer.append(numpy_helper.from_array(inits[name], name))
        node.input[k] = name

    w = inits[producer.input[1]]
    if w.shape[0] != flip.size:
        return False
    for c in readers_y:
        wc = inits[c.input[1]]
        group = next((helper.get_attribute_value(a) for a in c.attribute if a.name == "group"), 1)
        if wc.shape[1] * group != flip.size:
            return False
    replace(producer, 1, w * sign.reshape((-1,) + (1,) * (w.ndim - 1)))
    if len(producer.input) > 2 and producer.input[2]:
        replace(producer, 2, inits[producer.input[2]] * sign)
    for c in readers_y:
        wc = inits[c.input[1]]
        group = next((helper.get_attribute_value(a) for a in c.attribute if a.name == "group"), 1)
        per_in, per_out = wc.shape[1], wc.shape[0] // group
        col = np.ones((wc.shape[0], per_in))
        for ch in np.flatnonzero(flip):  # input channel ch: group ch // per_in, column ch % per_in
            g = ch // per_in
            col[g * per_out : (g + 1) * per_out, ch % per_in] = -1.0
        replace(c, 1, wc * col.reshape(col.shape + (1,) * (wc.ndim - 2)))
    return True


GROUPED_MAX_PER_GROUP = 4  # input channels per group up to which a grouped conv becomes depthwise convs


def grouped_as_depthwise(proto: Any, max_per_group: int = GROUPED_MAX_PER_GROUP) -> tuple[Any, list[str]]:
    """Rewrite each grouped conv (k input channels per group, 1 < k <= max_per_group) into k depthwise convs
    summed, exact in float; returns the graph and the rewritten nodes' names.

    ORT has no fast int8 kernel for grouped convs (one tiny GEMM per group: mbf's 64-group conv at 56x56
    runs ~10x slower as QLinearConv than as a float Conv), so they used to stay float in the integer graph,
    an island with a dequantize and a quantize around it. Output channel o of group g reads input channels
    g k + i, i < k; term r (r < k) gives every output channel the input channel i = (j + r) mod k, j being
    o's index in its group, through a channel Gather (a copy of codes, no arithmetic, skipped where it is
    the identity), and a depthwise conv with the weights W[o, i]. Each term is one integer depthwise conv
    and the sum one integer Add. Larger groups (k > max_per_group) stay one conv: k terms would cost more
    than the grouped kernel saves.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    inits = {t.name: t for t in m.graph.initializer}
    nodes, rewritten = [], []
    for n in m.graph.node:
        w_init = inits.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        group = int(attrs.get("group", 1))
        w = numpy_helper.to_array(w_init) if w_init is not None else None
        if w is None or group == 1 or w.ndim != 4 or not 1 < w.shape[1] <= max_per_group:
            nodes.append(n)
            continue
        k, outs = w.shape[1], w.shape[0]
        per_out = outs // group
        o = np.arange(outs)
        g, j = o // per_out, o % per_out
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        base = n.name or n.output[0]
        terms = []
        for r in range(k):
            i = (j + r) % k
            idx = g * k + i
            src = n.input[0]
            if not (outs == group * k and np.array_equal(idx, np.arange(outs))):
                src = f"{base}/gather{r}_out"
                iname = f"{base}/gather{r}.indices"
                m.graph.initializer.append(numpy_helper.from_array(idx.astype(np.int64), iname))
                nodes.append(
                    helper.make_node("Gather", [n.input[0], iname], [src], name=f"{base}/gather{r}", axis=1)
                )
            wname = f"{base}/dw{r}.weight"
            m.graph.initializer.append(numpy_helper.from_array(w[o, i][:, None].astype(np.float32), wname))
            out = n.output[0] if k == 1 else f"{base}/dw{r}_out"
            inputs = [src, wname] + ([bias] if bias and r == 0 else [])
            dw_attrs = {a: v for a, v in attrs.items() if a != "group"}
            nodes.append(
                helper.make_node("Conv", inputs, [out], name=f"{base}/dw{r}", group=outs, **dw_attrs)
            )
            terms.append(out)
        acc = terms[0]
        for r, t in enumerate(terms[1:], start=1):
            out = n.output[0] if r == k - 1 else f"{base}/sum{r}_out"
            nodes.append(helper.make_node("Add", [acc, t], [out], name=f"{base}/sum{r}"))
            acc = out
        rewritten.append(n.name)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m, rewritten
