"""Input-side rewrites of a finished int8 QDQ graph that ORT's x86 kernels run faster, exact bit for bit.

ORT runs int8 convolutions channels-last (its NHWC transformer turns QLinearConv into the com.microsoft
channels_last form and wraps the graph in Transposes). Two things follow, both measured on this CPU
(docs/speed.md):

- an NCHW uint8 input costs a Transpose inside the session and another one in the runtime's preprocessing
  (images are HWC); declaring the input NHWC and transposing inside the graph lets ORT's transpose optimizer
  cancel the pair, and the preprocessing drops its transpose too;
- the stem conv (3 input channels, 3x3, stride 2) is the one int8 conv slower than its fp32 twin: its im2col
  copies 3-byte runs. Written as zero-point padding + SpaceToDepth(2) + a 2x2 stride-1 conv over 12
  channels (the weights rearranged, the unused taps zero), it computes the same integers with 12-byte runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def nhwc_input(proto: Any) -> Any:
    """Declare the graph input [N, H, W, C] and transpose to NCHW as the first node (in place)."""
    from onnx import helper

    graph = proto.graph
    inp = graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    c, h, w = (dims[i].dim_value for i in (1, 2, 3))
    inner = inp.name + "_nchw"
    for node in graph.node:
        node.input[:] = [inner if i == inp.name else i for i in node.input]
    graph.node.insert(
        0, helper.make_node("Transpose", [inp.name], [inner], perm=[0, 3, 1, 2], name="input_nhwc")
    )
    dims[1].dim_value, dims[2].dim_value, dims[3].dim_value = h, w, c
    return proto


def stem_space_to_depth(proto: Any) -> bool:
    """Rewrite `DQ(input) -> Conv(3x3, stride 2, pads 1)` on an even-sized uint8 NCHW input (before
    `nhwc_input`); False if absent."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    src = graph.input[0].name  # an NCHW input: run this before nhwc_input
    dq = [n for n in consumers.get(src, []) if n.op_type == "DequantizeLinear"]
    if len(dq) != 1 or len(consumers.get(dq[0].output[0], [])) != 1:
        return False
    conv = consumers[dq[0].output[0]][0]
    w_dq = producers.get(conv.input[1])
    if (
        conv.op_type != "Conv"
        or _attr(conv, "kernel_shape") != [3, 3]
        or _attr(conv, "strides") != [2, 2]
        or _attr(conv, "pads") != [1, 1, 1, 1]
        or _attr(conv, "group", 1) != 1
        or _attr(conv, "dilations", [1, 1]) != [1, 1]
        or w_dq is None
        or w_dq.op_type != "DequantizeLinear"
        or w_dq.input[0] not in inits
    ):
        return False
    dims = graph.input[0].type.tensor_type.shape.dim
    h, w = dims[2].dim_value, dims[3].dim_value
    if h % 2 or w % 2:
        return False
    wq = numpy_helper.to_array(inits[w_dq.input[0]])  # (O, C, 3, 3) int8
    o, c = wq.shape[:2]
    w4 = np.zeros((o, c, 4, 4), wq.dtype)
    w4[:, :, :3, :3] = wq
    # kernel tap k = 2*kk + d: SpaceToDepth (DCR) puts (dy, dx, c) on the channel axis
    w2 = w4.reshape(o, c, 2, 2, 2, 2).transpose(0, 3, 5, 1, 2, 4).reshape(o, 4 * c, 2, 2)
    inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w2), w_dq.input[0]))
    pads = src + "_s2d_pads"
    graph.initializer.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), pads))
    padded, s2d = src + "_padded", src + "_s2d"
    at = list(graph.node).index(dq[0])
    graph.node.insert(at, helper.make_node("Pad", [src, pads, dq[0].input[2]], [padded], name="stem_pad"))
    graph.node.insert(at + 1, helper.make_node("SpaceToDepth", [padded], [s2d], blocksize=2, name="stem_s2d"))
    dq[0].input[0] = s2d
    for a in conv.attribute:
        if a.name == "kernel_shape":
            a.ints[:] = [2, 2]
        elif a.name == "strides":
            a.ints[:] = [1, 1]
        elif a.name == "pads":
            a.ints[:] = [0, 0, 0, 0]
    return True
