"""Per-channel range equalization through PReLU before int8 calibration (exact in float).

A per-tensor activation grid is as wide as its widest channel. In a PReLU layer the widest channels are
those whose slope is large and negative (a = -4 maps the negative side to four times its size), so the
other channels get a few codes. PReLU is positively homogeneous per channel (PReLU(d y) = d PReLU(y) for
d > 0), so channel c can be scaled by d_c in the producing conv (weights and bias) and by 1 / d_c in the
input weights of every conv that reads the PReLU's output: the float function is unchanged, and the
channels' ranges can be made alike. This is cross-layer equalization (Nagel et al., "Data-Free Quantization",
2019) with data-driven activation ranges, SmoothQuant's migration strength `alpha` (Xiao et al., 2022)
deciding how much of the spread moves into the consumer's weights: a depthwise consumer quantizes each
input channel on its own scale, so it takes all of it (alpha 1); a dense consumer shares one weight scale
per output channel across its input channels, so it takes half (alpha 0.5, a choice, not tuned).

Applied to the ONNX integer export (export._build_onnx), after onnx_float.prelu_as_max and before
calibration, unless the checkpoint brings learned scales (they belong to the unscaled channels). TFLite gets
the same scales (`prelu_scales`) on the PyTorch module before conversion (torch_rewrite.prelu_as_max, same
rules and exceptions). Measured effect: docs/export_hybrid.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SPREAD = 64.0  # d_c is kept within [1/64, 64] x the layer's geometric mean
DEAD = 1e-3  # a channel whose range is below this fraction of the widest is scaled as if it had this one


def channel_scales(
    lo: np.ndarray, hi: np.ndarray, weight_cols: np.ndarray | None, alpha: float
) -> np.ndarray:
    """d_c > 0 for each channel: lo/hi are the channel's range over both the PReLU input and output,
    `weight_cols` the largest |weight| reading each channel in the consumers (None: depthwise only)."""
    r = hi - lo
    r = np.maximum(r, DEAD * max(float(r.max()), 1e-30))  # dead channels (r = 0) must not set the mean
    if weight_cols is None or alpha >= 1.0:
        d = 1.0 / r
    else:
        w = np.maximum(weight_cols, DEAD * max(float(weight_cols.max()), 1e-30))
        d = w ** (1.0 - alpha) / r**alpha
    logd = np.log(d)
    logd -= logd.mean()  # the layer's overall scale stays where it was
    return np.exp(np.clip(logd, -np.log(MAX_SPREAD), np.log(MAX_SPREAD)))


def prelu_scales(
    lo: Sequence[np.ndarray],
    hi: Sequence[np.ndarray],
    readers: Sequence[tuple[np.ndarray, int]],
    alpha: float = 0.5,
) -> np.ndarray:
    """d_c for one PReLU layer. `lo`/`hi`: per-channel minima/maxima of its input and of its output (the
    grid they share spans both, and 0); `readers`: (weight [O, C/g, ...], groups) of each conv reading the
    output. Depthwise readers only: all of the spread moves into their weights (alpha 1)."""
    clo = np.minimum(np.min(np.stack(lo), axis=0), 0.0)
    chi = np.maximum(np.max(np.stack(hi), axis=0), 0.0)
    depthwise = all(g == clo.size and w.shape[1] == 1 for w, g in readers)
    if depthwise:
        return channel_scales(clo, chi, None, 1.0)
    cols = np.max([_input_column_max(w, g) for w, g in readers], axis=0)
    return channel_scales(clo, chi, cols, alpha)


@dataclass
class _Site:
    producer: Any  # Conv writing x
    max_node: Any  # the PReLU's Max
    readers: list[Any]  # Convs reading y


def _sites(proto: Any) -> list[_Site]:
    """PReLU-as-Max layers whose channels can be rescaled: x from a Conv (constant weights) read only by
    the slope conv and the Max, y read only by Convs with constant weights, as their data input."""
    from edgeface.converters.qdq import is_prelu_max

    graph = proto.graph
    inits = {t.name for t in graph.initializer}
    outs = {o.name for o in graph.output}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    found = []
    for m in graph.node:
        if not is_prelu_max(m):
            continue
        x, slope_out, y = m.input[0], m.input[1], m.output[0]
        p = producers.get(x)
        slope = producers.get(slope_out)
        users_y = readers.get(y, [])
        if (
            p is None
            or p.op_type != "Conv"
            or p.input[1] not in inits
            or (len(p.input) > 2 and p.input[2] and p.input[2] not in inits)
            or slope is None
            or {n.name for n in readers.get(x, [])} != {slope.name, m.name}
            or x in outs
            or y in outs
            or not users_y
            or any(
                c.op_type != "Conv"
                or c.input[0] != y
                or list(c.input).count(y) != 1
                or c.input[1] not in inits
                for c in users_y
            )
        ):
            continue
        found.append(_Site(p, m, users_y))
    return found


def equalize_prelu(proto: Any, batches: Iterable[np.ndarray], alpha: float = 0.5) -> tuple[Any, int]:
    """(copy of an ONNX graph with PReLU channels equalized, number of layers changed).

    `proto` is a float graph after onnx_float.prelu_as_max; `batches` are calibration inputs."""
    import onnx
    import onnxruntime as ort
    from edgeface.converters.qdq import run_batched
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    sites = _sites(m)
    if not sites:
        return m, 0
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    names: list[str] = []
    for s in sites:
        for t in (s.max_node.input[0], s.max_node.output[0]):
            probe.graph.output.append(helper.make_empty_tensor_value_info(t))
            names.append(t)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    for batch in batches:
        for outs in run_batched(sess, batch):
            for name, v in zip(out_names, outs, strict=True):
                if name in names and v.ndim >= 2:
                    axes = tuple(a for a in range(v.ndim) if a != 1)
                    lo[name] = np.minimum(lo.get(name, np.inf), v.min(axis=axes))
                    hi[name] = np.maximum(hi.get(name, -np.inf), v.max(axis=axes))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    changed = 0
    for s in sites:
        x, y = s.max_node.input[0], s.max_node.output[0]
        if x not in lo or y not in lo:
            continue
        readers = [(inits[c.input[1]], _group(c)) for c in s.readers]
        d = prelu_scales((lo[x], lo[y]), (hi[x], hi[y]), readers, alpha)
        tag = s.max_node.name.strip("/").replace("/", ".")
        _scale_input(m, inits, s.producer, 1, d, axis=0, tag=tag)
        if len(s.producer.input) > 2 and s.producer.input[2]:
            _scale_input(m, inits, s.producer, 2, d, axis=0, tag=tag)
        for c in s.readers:
            _scale_columns(m, inits, c, 1.0 / d, _group(c), tag)
        changed += 1
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    return m, changed


def _group(conv: Any) -> int:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in conv.attribute if a.name == "group"), 1)


def _input_column_max(w: np.ndarray, group: int) -> np.ndarray:
    """max |w| over everything that reads each input channel of a (grouped) conv weight [O, C/g, ...]."""
    per_in, per_out = w.shape[1], w.shape[0] // group
    a = np.abs(w).reshape(group, per_out, per_in, -1).max(axis=(1, 3))  # [group, per_in]
    return a.reshape(group * per_in)


def column_factors(f: np.ndarray, shape: Sequence[int], group: int) -> np.ndarray:
    """Per-input-channel factors `f` laid out to multiply a (grouped) conv weight of `shape` [O, C/g, ...]
    (PyTorch's and ONNX's layout): input channel ch is column ch % (C/g) of group ch // (C/g)'s rows."""
    per_in, per_out = shape[1], shape[0] // group
    col = f.reshape(group, 1, per_in).repeat(per_out, axis=1).reshape(shape[0], per_in)
    return col.reshape(col.shape + (1,) * (len(shape) - 2))


def _scale_columns(m: Any, inits: dict, conv: Any, f: np.ndarray, group: int, tag: str) -> None:
    w = inits[conv.input[1]]
    _set(m, inits, conv, 1, w * column_factors(f, w.shape, group), tag)


def _scale_input(m: Any, inits: dict, node: Any, k: int, f: np.ndarray, axis: int, tag: str) -> None:
    v = inits[node.input[k]]
    shape = [1] * v.ndim
    shape[axis] = -1
    _set(m, inits, node, k, v * f.reshape(shape), tag)


def _set(m: Any, inits: dict, node: Any, k: int, value: np.ndarray, tag: str) -> None:
    from onnx import numpy_helper

    name = f"{node.input[k]}_eq_{tag}"
    inits[name] = value.astype(np.float32)
    m.graph.initializer.append(numpy_helper.from_array(inits[name], name))
    node.input[k] = name


def layer_names(proto: Any) -> Sequence[str]:
    """The PReLU layers equalize_prelu can rescale (for reports and tests)."""
    return [s.max_node.name for s in _sites(proto)]
