"""`edgeface export`: PyTorch model -> ONNX / TFLite artifacts with their spec inside, parity-checked.

Order of work is chosen so that mistakes cost little: arguments, output folder and calibration images are
checked before the model loads; every artifact is written into a staging folder, run through the on-device
runtime (edgeface.runtime) for parity and for its verification threshold, and only when all of them pass are
they moved into place. A failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from edgeface.runtime.pack import safe_name

from edgeface.errors import EdgefaceError, ModelError, ParityError
from edgeface.spec import ModelSpec, spec_path_for, write_spec_json

FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "int8", "w6a6")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
MIN_IMPOSTOR_IMAGES = 64


@dataclass
class ArtifactReport:
    path: Path
    format: str
    precision: str
    size_bytes: int
    parity: Any  # converters.parity.Parity
    threshold: float | None  # None: the calibration images could not give one (see extra["threshold_unset"])
    per_channel_layers: int = 0
    packed_size_bytes: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "path": str(self.path),
            "format": self.format,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "parity": self.parity.to_dict(),
            "threshold": self.threshold,
            "per_channel_layers": self.per_channel_layers,
            "seconds": round(self.seconds, 2),
        }
        if self.packed_size_bytes is not None:
            d["packed_size_bytes"] = self.packed_size_bytes
        d.update(self.extra)
        return d


def parse_list(value: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items:
        raise EdgefaceError(f"no {what} given (choose from {', '.join(allowed)})")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise EdgefaceError(f"unknown {what} '{bad[0]}' (choose from {', '.join(allowed)})")
    return list(dict.fromkeys(items))


def split_images(
    images: Sequence[Path], calib: int, holdout: int, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Disjoint calibration and held-out parity sets from one folder, reproducibly."""
    if len(images) < MIN_IMPOSTOR_IMAGES + 8:
        raise EdgefaceError(
            f"--calib has {len(images)} images; export needs at least {MIN_IMPOSTOR_IMAGES + 8} "
            "(calibration, threshold and held-out parity images)"
        )
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = min(holdout, max(8, len(images) // 4))
    n_cal = min(calib, len(images) - n_hold)
    hold = [images[i] for i in order[:n_hold]]
    cal = [images[i] for i in order[n_hold : n_hold + n_cal]]
    return cal, hold


def load_inputs(paths: Sequence[Path], spec: ModelSpec) -> np.ndarray:
    """Float NCHW batch through the runtime's preprocessing (the one place that knows mean/std)."""
    from edgeface.runtime.preprocess import normalize, read_image

    return normalize([read_image(p) for p in paths], spec.replace(layout="NCHW"))


def _batches(x: np.ndarray, size: int = 32) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x


def export(
    model: str,
    weights: str | None,
    spec_file: str | None,
    precisions: str | Sequence[str],
    formats: str | Sequence[str],
    calib_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    min_cosine: float = 0.99,
    calib_images: int = 256,
    parity_images: int = 128,
    far: float = 1e-3,
    progress: bool = True,
    keep_float: Sequence[str] = (),
) -> list[ArtifactReport]:
    """Export every (format, precision) pair and write the ones that pass.

    An artifact that misses parity or that we fail to build is reported and not written; the others are.
    If any failed, the error raised (ParityError, or ModelError when a build failed) lists them all and
    carries the written artifacts' reports in its `reports` attribute, so the CLI still prints them.
    """
    import torch
    from edgeface.converters.staging import check_writable_dir, staged
    from tqdm.auto import tqdm

    from edgeface.data.folders import compression_images
    from edgeface.models.loading import load_model

    precs = parse_list(precisions, PRECISIONS, "precision")
    fmts = parse_list(formats, FORMATS, "format")
    if not 0.0 < min_cosine <= 1.0:
        raise EdgefaceError(f"--min-cosine must be in (0, 1], got {min_cosine}")
    out = Path(outdir)
    check_writable_dir(out)
    cal_paths, hold_paths = split_images(compression_images(calib_dir), calib_images, parity_images)
    loaded = load_model(model, weights, spec_file)
    net, spec = loaded.model, loaded.spec
    plan_source = _learned_plan(loaded)
    export_net = plan_source["model"] if plan_source else net  # a float twin of a fake-quant model
    x_cal, x_hold = load_inputs(cal_paths, spec), load_inputs(hold_paths, spec)
    with torch.inference_mode():
        ref_hold = np.concatenate([net(torch.from_numpy(b)).float().numpy() for b in _batches(x_hold)])

    _ONNX_CACHE.clear()
    _clear_tflite_cache()
    reports: list[ArtifactReport] = []
    failures: list[str] = []
    build_failed = False
    cause: BaseException | None = None
    jobs = [(f, p) for f in fmts for p in precs]
    bar = tqdm(total=len(jobs), desc="export", unit="artifact", disable=not progress)
    with staged(out) as stage:
        for fmt, prec in jobs:
            bar.set_postfix_str(f"{fmt} {prec}")
            t0 = time.perf_counter()
            # a module:factory name holds a colon: the file gets the pack's safe form of it, so the
            # folder's pack lists the files the export wrote rather than renamed copies
            name = safe_name(f"{spec.name}_{prec}{SUFFIX[fmt]}")
            path = stage / name
            try:
                build = _build(
                    fmt, prec, export_net, spec, x_cal, plan_source, model, weights, tuple(keep_float)
                )
                report = _finish(build, fmt, prec, path, x_cal, cal_paths, x_hold, ref_hold, far)
                if prec != "fp32":
                    _speed_check(report, build, fmt, export_net, spec, path)
            except Exception as e:  # our failure on this model: this artifact is lost, the others go on
                _discard(path)
                if isinstance(e, EdgefaceError) and not isinstance(e, ModelError):
                    raise  # the user's mistake (e.g. --w6a6 on an 8-bit checkpoint): nothing is written
                build_failed = True
                cause = cause or e  # `edgeface --debug` shows its traceback, chained to the summary error
                failures.append(f"{name}: {_model_failure(e, fmt, prec)}")
                bar.update(1)
                continue
            report.seconds = time.perf_counter() - t0
            report.path = out / name
            if report.parity.mean_cosine < min_cosine:
                where = f"; most drift at {report.parity.drift_layer}" if report.parity.drift_layer else ""
                failures.append(
                    f"{name} mean cosine {report.parity.mean_cosine:.4f} < {min_cosine} "
                    f"(min {report.parity.min_cosine:.4f} on {report.parity.images} held-out images{where}); "
                    f"not written{_widened_hint(report)}"
                )
                _discard(path)
            else:
                reports.append(report)
            bar.update(1)
        bar.close()
        _ONNX_CACHE.clear()
        _clear_tflite_cache()
    if failures:
        written = ", ".join(r.path.name for r in reports) or "nothing"
        msg = f"wrote {written}; failed: " + "; ".join(failures)
        err: EdgefaceError = ModelError(msg) if build_failed else ParityError(msg)
        err.reports = reports  # type: ignore[attr-defined]
        raise err from cause
    return reports


def _widened_hint(report: ArtifactReport) -> str:
    """What to try when a checkpoint's learned weights had to move to a coarser grid than it learned."""
    widened = report.extra.get("learned_weights_widened")
    if not widened:
        return ""
    return (
        f" ({len(widened['layers'])} of the checkpoint's 8-bit layers run as GEMM and were widened to the "
        f"7-bit grid ORT needs without VNNI: {widened['fix']}, or export the float weights with --int8)"
    )


def _seven_bits(widened: list[str], onnx_plan: dict[str, Any]) -> str:
    """The shortest `--layer-bits` value that puts `widened` at 7 bits: their layer classes (which also
    move that class's depthwise convs, harmlessly)."""
    classes = onnx_plan["layer_class"]
    return ",".join(f"{c}=7" for c in sorted({classes[n] for n in widened}))


def _discard(path: Path) -> None:
    for p in (path, spec_path_for(path)):
        p.unlink(missing_ok=True)


def _model_failure(e: BaseException, fmt: str, prec: str) -> str:
    """One line naming what failed and what to try (the traceback is shown with `edgeface --debug`)."""
    import traceback

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    node = getattr(e, "node", None)
    where = f" at {node}" if node else ""
    hint = (
        "try --keep-float LAYER for the layer named, or another --format"
        if prec != "fp32"
        else "check that the model exports with torch.onnx / litert-torch"
    )
    frames = traceback.extract_tb(e.__traceback__)
    origin = next((f"{Path(f.filename).name}:{f.name}" for f in reversed(frames)), "")
    if isinstance(e, ModelError):  # raised by our code, its message already says what to do
        return f"{fmt} {prec} export failed{where}: {text} (in {origin})"
    return f"{fmt} {prec} export failed{where} ({type(e).__name__}: {text}; in {origin}); {hint}"


SPEED_ROUNDS = 5


def _speed_check(
    report: ArtifactReport, build: Build, fmt: str, net: Any, spec: ModelSpec, path: Path
) -> None:
    """Time the integer artifact against its fp32 twin through the runtime (batch 1, one thread,
    interleaved rounds) and warn when it is not faster, naming the float ops left in it."""
    from edgeface.runtime.backends import load_artifact

    twin = path.with_name(path.stem + ".fp32twin" + path.suffix)
    try:
        data = _fp32_twin(fmt, net, spec)
        _write(twin, data)
        arts = [load_artifact(p, num_threads=1) for p in (twin, path)]
        h, w = spec.input_size
        face = np.full((h, w, 3), 128, np.uint8)
        xs = [a.native_input([face]) for a in arts]
        times: list[list[float]] = [[], []]
        for _ in range(SPEED_ROUNDS):
            for k, (a, x) in enumerate(zip(arts, xs, strict=True)):
                a.invoke(x)
                t0 = time.perf_counter()
                for _ in range(3):
                    a.invoke(x)
                times[k].append(time.perf_counter() - t0)
    finally:
        _discard(twin)
    ratio = float(np.median(np.array(times[0]) / np.array(times[1])))
    report.extra["speedup_vs_fp32"] = round(ratio, 2)
    if ratio < 1.0:
        floats = build.extra.get("float_ops", {})
        left = ", ".join(f"{k} x{v['count']}" for k, v in floats.items())
        outside = ", ".join(f"{k} x{n}" for k, n in build.extra.get("outside_xnnpack", {}).items())
        if left:
            why = f"float ops left in it: {left}"
        elif outside:
            why = (
                f"XNNPACK's delegate does not take its integer {outside}, so LiteRT runs them with its own "
                "kernels (docs/speed.md); time it on the device with `edgeface profile`"
            )
        else:
            why = (
                "no float ops are left, so this CPU's int8 kernels are the cause (docs/speed.md); "
                "time it on the device with `edgeface profile`"
            )
        report.extra.setdefault("warnings", []).append(
            f"{path.name} is not faster than its fp32 twin here ({ratio:.2f}x, batch 1, one thread); {why}"
        )


def _fp32_twin(fmt: str, net: Any, spec: ModelSpec) -> bytes:
    from edgeface.converters import metadata

    if fmt == "onnx":
        from edgeface.converters import onnx as onnx_conv

        if "float" not in _ONNX_CACHE:
            _ONNX_CACHE["float"] = onnx_conv.float_graph(net, spec)
        b = onnx_conv.build_onnx(_ONNX_CACHE["float"], spec.replace(layout="NCHW"), "fp32")
        return metadata.embed_onnx_spec(b.proto, b.spec).SerializeToString()
    from edgeface.converters.tflite import build_tflite

    data, new_spec, _ = build_tflite(net, spec, "fp32", [])
    return metadata.embed_tflite_spec(data, new_spec)


@dataclass
class Build:
    data: bytes  # the artifact without its spec
    spec: ModelSpec
    per_channel_layers: int
    int8_weight_bytes: int = 0
    drift: Any = None  # callable(x) -> (layer, cosine) | None
    extra: dict[str, Any] = field(default_factory=dict)


def _build(
    fmt: str,
    prec: str,
    net: Any,
    spec: ModelSpec,
    x_cal: np.ndarray,
    plan: Any,
    model: str,
    weights: str | None,
    keep_float: tuple[str, ...] = (),
) -> Build:
    provenance = {
        **spec.provenance,
        "exported_by": "edgeface export",
        "source_model": model,
        "source_weights": Path(weights).name if weights else None,
        "format": fmt,
        "calibration_images": int(len(x_cal)),
        "learned_quantization": bool(plan),
    }
    base = spec.replace(provenance=provenance, threshold=None, threshold_far=None)
    if fmt == "onnx":
        build = _build_onnx(prec, net, base, x_cal, plan, keep_float)
    else:
        build = _build_tflite(prec, net, base, x_cal, plan)
    if prec != "fp32" and plan and plan.get("float_layers"):  # which layers, where float_ops counts op types
        build.extra["checkpoint_float_layers"] = plan["float_layers"]
    return build


def _build_tflite(prec: str, net: Any, spec: ModelSpec, x_cal: np.ndarray, plan: Any) -> Build:
    from edgeface.converters.tflite import build_tflite

    data, new_spec, info = build_tflite(net, spec, prec, _batches(_to_layout(x_cal, "NHWC")), plan)
    floats = info.pop("float_ops", [])
    reasons = info.pop("float_op_reasons", {})  # ops the exporter keeps float, and why
    outside = [op for op in info.pop("outside_delegate", []) if op not in floats]
    if outside:  # integer ops LiteRT runs itself, between XNNPACK partitions
        info["outside_xnnpack"] = {op: outside.count(op) for op in sorted(set(outside))}
    if floats:
        none = "ai-edge-quantizer has no int8 kernel for it"
        info["float_ops"] = {
            op: {"count": floats.count(op), "why": reasons.get(op, none)} for op in sorted(set(floats))
        }
    return Build(data, new_spec, info["per_channel_layers"], info.get("int8_weight_bytes", 0), None, info)


_ONNX_CACHE: dict[str, Any] = {}  # one float export and one calibration pass serve every precision of a run


def _build_onnx(
    prec: str, net: Any, spec: ModelSpec, x_cal: np.ndarray, plan: Any, keep_float: tuple[str, ...] = ()
) -> Build:
    from edgeface.converters import onnx as onnx_conv
    from edgeface.converters import qdq
    from edgeface.converters.parity import onnx_layer_drift

    if "float" not in _ONNX_CACHE:
        _ONNX_CACHE["float"] = onnx_conv.float_graph(net, spec)
    float_proto = _ONNX_CACHE["float"]
    onnx_plan = plan.get("onnx") if plan else None
    keep_float = (*keep_float, *(onnx_plan or {}).get("keep_float", ()))  # layers the checkpoint left float
    learned_float = tuple((onnx_plan or {}).get("float_tensors", ()))  # tensors the checkpoint keeps float
    if prec != "fp32" and "stats" not in _ONNX_CACHE:
        from edgeface.converters.equalize import equalize_prelu
        from edgeface.converters.onnx_float import grouped_as_depthwise, prelu_as_max
        from edgeface.converters.sensitivity import SENSITIVITY_IMAGES, fragile_tensors

        graph = prelu_as_max(float_proto, any_slope=True)  # the graph build_onnx quantizes
        if not onnx_plan:  # learned activation ranges and weight scales belong to the unscaled channels
            graph, _ONNX_CACHE["equalized"] = equalize_prelu(graph, _batches(x_cal))
            # after equalization, which scales the grouped conv's weights as one conv
            graph, _ONNX_CACHE["grouped_as_depthwise"] = grouped_as_depthwise(graph)
        _ONNX_CACHE["quantized_from"] = graph
        points = qdq.calibration_points(graph, keep_float, learned_float)
        stats = qdq.collect_stats(graph, points, _batches(x_cal))
        fragile: list[tuple[str, float]] = []
        if not onnx_plan:  # learned scales are the checkpoint's decision, not ours
            points = qdq.quant_points(graph, keep_float)
            act = qdq.activation_plan(graph, qdq.calibrated_ranges(graph, points, stats), 8, "uint8")
            fragile, _ = fragile_tensors(graph, act, points, x_cal[:SENSITIVITY_IMAGES])
            if fragile:  # keeping tensors float moves some quantizers: calibrate the new points too
                kept = [t for t, _ in fragile]
                new = [p for p in qdq.calibration_points(graph, keep_float, kept) if p not in stats.lo]
                if new:
                    qdq.collect_stats(graph, new, _batches(x_cal), into=stats)
        _ONNX_CACHE["stats"], _ONNX_CACHE["fragile"] = stats, fragile
    stats = _ONNX_CACHE.get("stats")
    fragile = _ONNX_CACHE.get("fragile", [])
    b = onnx_conv.build_onnx(
        float_proto if prec == "fp32" else _ONNX_CACHE["quantized_from"],
        spec.replace(layout="NCHW"),
        prec,
        stats,
        onnx_plan,
        keep_float=keep_float,
        float_tensors=(*learned_float, *(t for t, _ in fragile)),
    )
    b.spec = b.spec.replace(provenance={**b.spec.provenance, "opset": onnx_conv.OPSET})
    per_channel = onnx_conv.per_channel_weight_scales(b.proto)
    int8_bytes = onnx_conv.int8_weight_bytes(b.proto, 31 if prec == "w6a6" else 127)

    def drift(x: np.ndarray) -> Any:
        if not b.points:
            return None
        return onnx_layer_drift(b.float_proto, b.drift_proto, b.points, x, b.spec.input_quant)

    extra: dict[str, Any] = {"opset": onnx_conv.OPSET}
    floats: dict[str, dict[str, Any]] = {}
    for _, op, why in b.float_ops:
        floats.setdefault(op, {"count": 0, "why": why})["count"] += 1
    if floats:
        extra["float_ops"] = floats
    if fragile:
        extra["kept_float_tensors"] = {t: round(c, 4) for t, c in fragile}
    widened = onnx_conv.widened_learned_layers(float_proto, onnx_plan) if onnx_plan and prec != "fp32" else []
    if widened:
        extra["learned_weights_widened"] = {
            "layers": widened,
            "why": "ORT runs them as u8s8 GEMMs, which saturate on x86 without VNNI: 7-bit grid [-63, 63] "
            "(onnx.gemm_safe_weights), not the checkpoint's 8-bit one",
            "fix": "quantize them at 7 bits: --layer-bits " + _seven_bits(widened, onnx_plan),
        }
    if prec != "fp32" and _ONNX_CACHE.get("equalized"):
        extra["prelu_layers_equalized"] = _ONNX_CACHE["equalized"]
    if prec != "fp32" and _ONNX_CACHE.get("grouped_as_depthwise"):
        extra["grouped_convs_as_depthwise"] = _ONNX_CACHE["grouped_as_depthwise"]
    return Build(b.proto.SerializeToString(), b.spec, len(per_channel), int8_bytes, drift, extra)


def _embed(fmt: str, data: bytes, spec: ModelSpec) -> bytes:
    from edgeface.converters import metadata

    if fmt == "onnx":
        import onnx

        proto = onnx.load_from_string(data)
        return metadata.embed_onnx_spec(proto, spec).SerializeToString()
    return metadata.embed_tflite_spec(data, spec)


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as e:
        raise EdgefaceError(f"cannot write {path}: {e.strerror}") from None


def _finish(
    build: Build,
    fmt: str,
    prec: str,
    path: Path,
    x_cal: np.ndarray,
    cal_paths: Sequence[Path],
    x_hold: np.ndarray,
    ref_hold: np.ndarray,
    far: float,
) -> ArtifactReport:
    """Write, run through the runtime, set the threshold, write again with the complete spec."""
    from edgeface.converters.parity import parity
    from edgeface.converters.threshold import calibrate_threshold
    from edgeface.runtime.backends import load_artifact

    _write(path, _embed(fmt, build.data, build.spec))
    artifact = load_artifact(path, num_threads=1)
    layout = build.spec.layout
    # litert-torch graphs have a static batch of 1 (their final Reshape is [1, D]); XNNPACK cannot resize them
    size = 1 if fmt == "tflite" else 32
    emb_hold = np.concatenate([artifact.run(_to_layout(b, layout)) for b in _batches(x_hold, size)])
    par = parity(emb_hold, ref_hold)
    if build.drift is not None and prec != "fp32":
        found = build.drift(x_hold[:16])
        if found is not None:
            par = type(par)(par.mean_cosine, par.min_cosine, par.images, found[0], found[1])
    emb_cal = np.concatenate([artifact.run(_to_layout(b, layout)) for b in _batches(x_cal, size)])
    # Unlabelled calibration images (a flat folder) give no impostor pairs: ship without a threshold and
    # say why (the CLI points to `edgeface threshold`) rather than fail or guess one.
    threshold, unset = calibrate_threshold(emb_cal, cal_paths, far)
    provenance = {**build.spec.provenance, "parity": par.to_dict(), "threshold_images": len(cal_paths)}
    if unset is not None:
        provenance["threshold_unset"] = unset
    spec = build.spec.replace(
        threshold=threshold,
        threshold_far=far if threshold is not None else None,
        provenance={
            **provenance,
            **{k: build.extra[k] for k in ("float_ops", "checkpoint_float_layers") if build.extra.get(k)},
        },
    )
    data = _embed(fmt, build.data, spec)
    _write(path, data)
    write_spec_json(spec, spec_path_for(path))
    packed = None
    if prec == "w6a6":
        packed = len(data) - build.int8_weight_bytes + (build.int8_weight_bytes * 6 + 7) // 8
    extra = {**build.extra, **({"threshold_unset": unset} if unset is not None else {})}
    return ArtifactReport(
        path, fmt, prec, len(data), par, threshold, build.per_channel_layers, packed, extra=extra
    )


def _learned_plan(loaded: Any) -> dict[str, Any] | None:
    """Scales learned by `edgeface quantize` when the weights are such a checkpoint (else None: calibrate)."""
    ckpt = loaded.checkpoint
    if not ckpt or not any(t.get("kind") == "quant" for t in ckpt.get("transforms", [])):
        return None
    from edgeface.converters.learned import plan_from_quantized

    return plan_from_quantized(loaded.model, loaded.spec)


def _clear_tflite_cache() -> None:
    import sys

    mod = sys.modules.get("edgeface.converters.tflite")
    if mod is not None:
        mod._FLOAT_CACHE.clear()
