"""Constant folding of a float TFLite graph: ops that read only constants become one constant.

litert-torch leaves computations on constants in the graph (EdgeFace-XS: its Fourier positional encoding,
FLOOR_DIV, POW, DIV, SIN, COS and a CONV_2D, 24 ops). Quantized, they are worse than useless: an int8 DIV
whose divisor rounds to the zero code aborts the interpreter, SIN/COS stay float behind DEQUANTIZE/QUANTIZE
pairs, and the constant they compute loses precision it never needed to lose. Their values are read from
one run of the float interpreter (every tensor preserved), exact by construction, and stored as buffers.
A graph without such ops is returned byte for byte (plain CNNs).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def foldable_ops(model: Any) -> list[int]:
    """Indices of the ops whose inputs are all constants or outputs of such ops, in execution order."""
    from edgeface.converters import tflite_learned as tl

    graph = model.subgraphs[0]
    const = {i for i in range(len(graph.tensors)) if tl.is_const(model, graph, i)}
    fold = []
    for k, op in enumerate(graph.operators):
        ins = [int(i) for i in op.inputs if i >= 0]
        if ins and all(i in const for i in ins) and tl.op_name(model, op) != "CUSTOM":
            fold.append(k)
            const.update(int(o) for o in op.outputs)
    return fold


def fold_constants(data: bytes) -> tuple[bytes, int]:
    """(graph with every constant computation replaced by its value, number of ops folded)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter
    from edgeface.converters import tflite_learned as tl
    from edgeface.converters.staging import native_section

    from edgeface.quiet import native_quiet

    model = tl.read(data)
    graph = model.subgraphs[0]
    fold = set(foldable_ops(model))
    if not fold:
        return data, 0
    produced = {int(o) for k in fold for o in graph.operators[k].outputs}
    kept = [op for k, op in enumerate(graph.operators) if k not in fold]
    read_later = {int(i) for op in kept for i in op.inputs if i >= 0}
    needed = sorted(produced & (read_later | {int(o) for o in graph.outputs}))
    with native_section(), native_quiet():
        interp = Interpreter(model_content=data, num_threads=1, experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
    for d in interp.get_input_details():
        interp.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    interp.invoke()
    for i in needed:
        value = np.ascontiguousarray(interp.get_tensor(i))
        buf = schema.BufferT()
        buf.data = np.frombuffer(value.tobytes(), np.uint8)
        model.buffers.append(buf)
        t = graph.tensors[i]
        t.buffer = len(model.buffers) - 1
        t.shape = np.array(value.shape, np.int32)
    graph.operators = kept
    return tl.write(model), len(fold)
