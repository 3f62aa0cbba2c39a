"""`edgeface profile`: latency of an artifact and of the whole pipeline, the way device benchmarks report it.

Follows TFLite's benchmark_model and onnxruntime_perf_test: session init time, the first inference
(separately, because it includes lazy allocation and kernel selection), warm-up runs that are not counted,
then mean / percentiles / min / max / std over N timed runs, the thread count, peak RSS, and a per-operator
breakdown where the runtime has a profiler. Per-stage times (decode, detect, align, embed, match) show where
a device actually spends a verification, which the network-only numbers hide.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from edgeface.runtime.align import align_face
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.match import cosine_similarity
from edgeface.runtime.pipeline import STAGES, Pipeline, Timings
from edgeface.runtime.preprocess import normalize, read_image

from edgeface.errors import EdgefaceError

DEFAULT_IMAGE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "raw_sample"


def latency_stats(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        raise EdgefaceError("no timed runs (--runs must be >= 1)")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "mean": float(a.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(a.min()),
        "max": float(a.max()),
        "std": float(a.std()),
    }


def peak_rss_mb() -> float:
    """ru_maxrss is KiB on Linux and bytes on macOS."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def default_image() -> Path | None:
    photos = sorted(DEFAULT_IMAGE_DIR.rglob("*.jpg")) if DEFAULT_IMAGE_DIR.is_dir() else []
    return photos[0] if photos else None


class Budget:
    """A wall-clock budget shared by the profile's loops; `hit` records that one was cut short."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds, self.start, self.hit = seconds, time.perf_counter(), False

    def deadline(self, fraction_of_rest: float) -> float:
        """A deadline `fraction_of_rest` of the way through what is left of the budget."""
        if self.seconds is None:
            return float("inf")
        now = time.perf_counter()
        rest = max(0.0, self.start + self.seconds - now)
        return now + rest * fraction_of_rest

    def expired(self, deadline: float) -> bool:
        if time.perf_counter() < deadline:
            return False
        self.hit = True
        return True


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def profile_artifact(
    model: str | os.PathLike[str],
    image: str | os.PathLike[str] | None = None,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    detector_path: str | os.PathLike[str] | None = None,
    operators: bool = True,
    progress: bool = False,
    refine_landmarks: bool | str | os.PathLike[str] = True,
    gallery: str | os.PathLike[str] | None = None,
    top_k: int = 5,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Profile `model`; `image` (a photo with a face) drives the per-stage pipeline timings.

    The match stage is a 1:1 cosine comparison, or with `gallery` a 1:N top-k search of that gallery
    (loaded once beforehand, as a long-running service would).

    `max_seconds` bounds the warm-up and timed runs: when it runs out, the network and pipeline loops stop
    and the statistics cover the runs done (`runs` < `runs_requested`, `stopped_by_budget`), so a huge
    `--runs` cannot make a profile run forever. Half the budget goes to each loop.
    """
    from tqdm.auto import tqdm

    if runs < 1:
        raise EdgefaceError("--runs must be >= 1")
    if warmup < 0:
        raise EdgefaceError("--warmup must be >= 0")
    if max_seconds is not None and not (np.isfinite(max_seconds) and max_seconds > 0):
        raise EdgefaceError(f"--max-seconds must be a finite number > 0, got {max_seconds}")
    budget = Budget(max_seconds)
    artifact = load_artifact(model, num_threads=threads)
    spec = artifact.spec
    image_path = Path(image) if image else default_image()

    # Network alone, on a real aligned face when we have one (int8 activations depend on the data). The
    # crop is made without running the network, so the first inference timed below really is the first.
    t0 = time.perf_counter()
    pipe = Pipeline(
        artifact, detector_path=detector_path, warn=lambda _msg: None, refine_landmarks=refine_landmarks
    )
    detector_init_ms = (time.perf_counter() - t0) * 1e3
    if image_path is not None:
        image = read_image(image_path)
        face, _ = pipe.find_face(image, image_path)
        crop = align_face(image, face.landmarks, spec.input_size, spec.crop_box())
    else:
        h, w = spec.input_size
        crop = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    # "embed" is preprocessing + inference + output dequantization of one aligned crop, as the device runs it
    first_ms = _timed(lambda: artifact.embed([crop]))
    network_deadline = budget.deadline(0.5 if image_path is not None else 1.0)
    warmup_done = 0
    for _ in range(warmup):
        if budget.expired(network_deadline):
            break
        artifact.embed([crop])
        warmup_done += 1
    bar = tqdm(
        total=runs * (2 if image_path else 1), desc="profile", unit="run", disable=not progress, leave=False
    )
    embed_ms = []
    for i in range(runs):
        embed_ms.append(_timed(lambda: artifact.embed([crop])))
        bar.update()
        if i + 1 < runs and budget.expired(network_deadline):
            break

    stages: dict[str, Any] | None = None
    pipeline_ms: dict[str, float] | None = None
    totals: list[float] = []
    if image_path is not None:
        per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
        reference = artifact.embed([crop])[0]
        with ExitStack() as stack:
            match = _matcher(stack, model, spec, gallery, top_k, reference)
            pipeline_deadline = budget.deadline(1.0)
            for i in range(runs):
                t = Timings()
                e = pipe.embed_image(image_path, t)
                with t.stage("match"):
                    match(e.embedding)
                for s in STAGES:
                    per_stage[s].append(t.ms.get(s, 0.0))
                totals.append(sum(t.ms.values()))
                bar.update()
                if i + 1 < runs and budget.expired(pipeline_deadline):
                    break
        stages = {s: latency_stats(v) for s, v in per_stage.items()}
        pipeline_ms = latency_stats(totals)
    bar.close()

    op_rows = artifact.operator_profile(normalize([crop], spec), min(runs, 20)) if operators else None
    return {
        "model": str(model),
        "backend": artifact.backend,
        "precision": spec.precision,
        "input": {
            "size": list(spec.input_size),
            "layout": spec.layout,
            "quantized": spec.input_quant is not None,
        },
        "image": str(image_path) if image_path else None,
        "match": _describe_match(gallery, top_k),
        "refine_landmarks": refine_landmarks if isinstance(refine_landmarks, bool) else str(refine_landmarks),
        "threads": threads if threads else os.cpu_count(),
        "threads_requested": threads,
        "runs": len(embed_ms),
        "runs_requested": runs,
        "pipeline_runs": len(totals),
        "warmup_runs": warmup_done,
        "max_seconds": max_seconds,
        "stopped_by_budget": budget.hit,
        "init_ms": artifact.init_ms,
        "detector_init_ms": detector_init_ms,
        "first_inference_ms": first_ms,
        "inference_ms": latency_stats(embed_ms),
        "pipeline_ms": pipeline_ms,
        "stages_ms": stages,
        "peak_rss_mb": peak_rss_mb(),
        "operators": op_rows,
        "operators_note": None
        if op_rows is not None
        else (
            "per-operator profiling disabled"
            if not operators
            else f"{artifact.backend}'s Python API has no per-operator profiler; on the device run TFLite's "
            "benchmark_model --enable_op_profiling=true"
        ),
    }


def _matcher(
    stack: ExitStack,
    model: str | os.PathLike[str],
    spec: Any,
    gallery: str | os.PathLike[str] | None,
    k: int,
    reference: np.ndarray,
) -> Callable[[np.ndarray], Any]:
    if gallery is None:
        return lambda e: cosine_similarity(e, reference)
    from edgeface.runtime.gallery import Gallery, ModelTag

    g = stack.enter_context(Gallery(gallery, readonly=True))
    tag = ModelTag.of(spec, model)
    g.identify(reference, tag, k)  # binds the check and loads the matrix outside the timed runs
    return lambda e: g.identify(e, tag, k)


def _describe_match(gallery: str | os.PathLike[str] | None, k: int) -> dict[str, Any]:
    if gallery is None:
        return {"kind": "1:1 cosine"}
    from edgeface.runtime.gallery import Gallery

    with Gallery(gallery, readonly=True) as g:
        return {"kind": f"1:N top-{k}", "gallery": str(gallery), "templates": len(g)}
