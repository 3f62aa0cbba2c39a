"""Prune to a budget: the smallest pruning ratio whose model meets a MAC count or a measured latency.

MACs say little about speed on a device: depthwise layers, memory-bound 1x1 convs at high resolution and
int8 kernels that pack channels in groups of 4-16 make latency a poor linear function of MACs. So a latency
budget is met by measuring: every candidate is exported as a user would (`edgeface export`, in a child
process so the exporter's memory is returned) and timed through `edgeface.runtime` on this machine, batch
1, one thread. The ratio is found by bisection (latency and MACs fall as the ratio grows); each probe
prunes a fresh copy one-shot with the run's own settings, so the structure found is the one the run makes
(exactly, for per-layer pruning; global pruning and an iterative schedule may move a few channels).

Public API:
    parse_macs(text, original) -> int                 "150M", "1.5e8", or a ratio of the original ("0.65")
    search_ratio(model, spec, measure, target, prune_kwargs, ...) -> (ratio, probes)
    macs_measure(spec) -> measure(model) -> float      MACs of one forward pass
    LatencyMeasure(model_ref, spec, runtime, precision, calib_dir) -> measure(model) -> float (ms)
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from edgeface.converters.export import MIN_IMPOSTOR_IMAGES
from edgeface.errors import EdgefaceError, ModelError
from edgeface.spec import ModelSpec

RUNTIMES = {"onnxruntime": ("onnx", ".onnx"), "litert": ("tflite", ".tflite")}
LATENCY_PRECISIONS = ("int8", "fp32")
PARITY_IMAGES = 8
# export's floor: calibration faces for the embedded threshold's impostor pairs, plus held-out parity faces
MIN_LATENCY_IMAGES = MIN_IMPOSTOR_IMAGES + PARITY_IMAGES


def parse_macs(text: str, original: int) -> int:
    """A MAC budget: an absolute count ("150M", "1.5e8", "150000000") or, below 1, a ratio of the original."""
    raw = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(raw[-1:], 1.0)
    try:
        value = float(raw[:-1] if scale != 1.0 else raw)
    except ValueError:
        raise EdgefaceError(f"--target-macs {text!r}: give a count (150M, 1.5e8) or a ratio (0.65)") from None
    if not math.isfinite(value) or value <= 0:
        raise EdgefaceError(f"--target-macs must be a positive finite number, got {text!r}")
    macs = value * original if scale == 1.0 and value < 1.0 else value * scale
    if macs >= original:
        raise EdgefaceError(f"--target-macs {text}: the model needs only {original / 1e6:.1f} M MACs already")
    return int(macs)


def search_ratio(
    model: nn.Module,
    spec: ModelSpec,
    measure: Callable[[nn.Module], float],
    target: float,
    prune_kwargs: dict[str, Any],
    max_ratio: float = 0.9,
    tolerance: float = 0.01,
    progress: Callable[[str], None] | None = None,
) -> tuple[float, list[dict[str, float]]]:
    """Smallest ratio in (0, max_ratio] whose pruned copy of `model` measures <= `target` (bisection).

    `model` is not modified. Raises ModelError when even `max_ratio` misses the budget (protected and
    unsafe layers bound what pruning can remove).
    """
    from edgeface.compress.prune import plan_groups, prune_model

    probes: list[dict[str, float]] = []
    kwargs = dict(prune_kwargs)
    if kwargs.get("plan") is None:  # one trace for every probe: the architecture is the same
        keys = ("protect", "protect_defaults", "scope")
        kwargs["plan"] = plan_groups(model, spec, **{k: kwargs[k] for k in keys if k in kwargs})

    def probe(ratio: float) -> float:
        m, plan = kwargs["plan"].clone(model)
        prune_model(m, spec, ratio, steps=1, progress=False, **{**kwargs, "plan": plan})
        value = float(measure(m))
        probes.append({"ratio": round(ratio, 4), "value": value})
        if progress is not None:
            progress(f"budget search: ratio {ratio:.3f} -> {value:,.3f} (target {target:,.3f})")
        return value

    if probe(max_ratio) > target:
        raise ModelError(
            f"even pruning ratio {max_ratio} gives {probes[-1]['value']:,.3f} > target {target:,.3f}; the "
            "protected layers (stem, head, --protect) and the layers left whole bound what pruning can remove"
        )
    lo, hi = 0.0, max_ratio
    while hi - lo > tolerance:
        mid = round((lo + hi) / 2, 4)
        if probe(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi, probes


def macs_measure(spec: ModelSpec) -> Callable[[nn.Module], float]:
    from edgeface.compress.prune import count_macs_params

    return lambda m: float(count_macs_params(m, spec)[0])


class LatencyMeasure:
    """Export a candidate with `edgeface export` (child process) and time it with `edgeface.runtime`.

    Timing: batch 1, one thread, the artifact's own input (`invoke`, what onnxruntime_perf_test or
    benchmark_model time), 10 warm-up calls, then the median of `runs`. Other jobs on the machine inflate
    it; set the budget for the machine (and load) the command runs on.
    """

    def __init__(
        self,
        model_ref: str,
        spec: ModelSpec,
        runtime: str,
        precision: str,
        calib_dir: str | os.PathLike[str],
        runs: int = 50,
        base_model: str | None = None,
        prior_transforms: list[dict[str, Any]] | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise EdgefaceError(f"--on {runtime}: choose one of {', '.join(RUNTIMES)}")
        if precision not in LATENCY_PRECISIONS:
            raise EdgefaceError(f"--latency-precision {precision}: choose one of {LATENCY_PRECISIONS}")
        self.model_ref, self.spec, self.runtime, self.precision = model_ref, spec, runtime, precision
        self.calib_dir, self.runs = str(calib_dir), runs
        self.base_model = base_model or model_ref
        self.prior = list(prior_transforms or [])

    def __call__(self, model: nn.Module) -> float:
        from edgeface.models.checkpoint import save

        fmt, suffix = RUNTIMES[self.runtime]
        with tempfile.TemporaryDirectory(prefix="edgeface_budget_") as tmp:
            ckpt = Path(tmp) / "candidate.pt"
            save(ckpt, model, self.spec, base_model=self.base_model, transforms=[*self.prior, _record(model)])
            out = Path(tmp) / "artifact"
            cmd = [sys.executable, "-m", "edgeface.cli.main", "export", "-m", self.model_ref, "-w", str(ckpt),
                   f"--{self.precision}", "--format", fmt, "--calib", self.calib_dir, "-o", str(out),
                   "--calib-images", str(MIN_IMPOSTOR_IMAGES), "--parity-images", str(PARITY_IMAGES),
                   "--min-cosine", "0.01", "--no-pack"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise ModelError(f"cannot export a pruned candidate to time it on {self.runtime}: {last}")
            artifact = next(out.glob(f"*{suffix}"), None)
            if artifact is None:
                raise ModelError(f"edgeface export wrote no {suffix} artifact to time")
            return time_artifact(artifact, self.runs)


def _record(model: nn.Module) -> dict[str, Any]:
    from edgeface.compress.prune import layer_shapes

    return {"kind": "prune", "layers": layer_shapes(model)}


def time_artifact(path: str | os.PathLike[str], runs: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of one batch-1 call of the artifact on its native input, one thread."""
    import time

    import numpy as np

    from edgeface.runtime.backends import load_artifact

    art = load_artifact(path, num_threads=1)
    h, w = art.spec.input_size
    face = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = art.native_input([face])
    for _ in range(warmup):
        art.invoke(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        art.invoke(x)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))
