"""A verification threshold for an artifact, set at a target false-match rate on impostor pairs.

Impostor pairs are images of different identities (an image's identity is its folder, as in LFW's
aligned112/<Name>/); the threshold is the cosine that at most `fmr` of them reach
(`edgeface.eval.rates.threshold_at_fmr`, the one rule every FMR-driven threshold in edgeface follows). It
is computed from the artifact's own embeddings, since a quantized model's similarity distribution shifts.

Two callers:
- the exporter (`calibrate_threshold`), on its calibration images. Images without identity folders (a flat
  folder) cannot give impostor pairs: the artifact then ships without a threshold, and the reason says to
  run `edgeface threshold` on labelled data.
- `edgeface threshold` (`calibrate_artifact`), on the user's own identity-folder dataset: it rewrites the
  spec embedded in the artifact and the sidecar together, all or nothing.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import EdgefaceError
from edgeface.eval.rates import threshold_at_fmr
from edgeface.io import printable
from edgeface.spec import METADATA_KEY, ModelSpec, spec_path_for

DEFAULT_IMPOSTORS = 1_000_000  # FMR 1e-4 lets 100 of them pass: a stable quantile
DEFAULT_CONFIDENCE = 0.95  # people-level: see rates.threshold_at_fmr_bound
DEFAULT_REPLICATES = 200


def impostor_scores(embeddings: np.ndarray, identities: Sequence[str]) -> np.ndarray:
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = e @ e.T
    ids = np.asarray(identities)
    iu = np.triu_indices(len(e), k=1)
    different = ids[iu[0]] != ids[iu[1]]
    return sims[iu][different]


def _clip(threshold: float) -> float:
    return float(min(max(threshold, -1.0), 1.0))


def calibrate_threshold(
    embeddings: np.ndarray, paths: Sequence[Path], far: float = 1e-3
) -> tuple[float | None, str | None]:
    """(threshold, None), or (None, why) when the images cannot give the impostor pairs `far` needs.

    Unlabelled images (all in one folder) give no impostor pairs at all; labelled ones too few to resolve
    `far` (fewer than 1/far pairs) would give a threshold that says nothing about `far`. Either way the
    artifact is better shipped without a threshold than with an unfounded one.
    """
    identities = [Path(p).parent.name for p in paths]
    if len(set(identities)) < 2:
        return None, (
            "the calibration images are not in identity folders (DIR/<identity>/<image>), so they give no "
            "impostor pairs"
        )
    scores = impostor_scores(embeddings, identities)
    needed = int(np.ceil(1.0 / far - 1e-9))
    if len(scores) < needed:
        return None, (
            f"the calibration images give {len(scores)} impostor pairs; FMR {far:g} needs at least {needed}"
        )
    return _clip(threshold_at_fmr(scores, far).threshold), None


def threshold_at_far(embeddings: np.ndarray, paths: Sequence[Path], far: float = 1e-3) -> float:
    """The smallest cosine threshold whose impostor accept rate (score >= threshold) is <= `far`."""
    threshold, why = calibrate_threshold(embeddings, paths, far)
    if threshold is None:
        raise EdgefaceError(f"cannot set a threshold at FAR {far:g}: {why}")
    return threshold


# --- edgeface threshold --------------------------------------------------------------------------------
def embedded_spec_present(path: Path, data: bytes) -> bool:
    """Does the artifact file itself carry a spec (as the exporter writes it)?"""
    if path.suffix.lower() == ".onnx":
        import onnx

        try:
            proto = onnx.load_from_string(data)
        except Exception as e:  # a protobuf error is the file's problem, not ours
            raise EdgefaceError(
                f"{printable(path)} is not a readable ONNX model ({type(e).__name__})"
            ) from None
        return any(p.key == METADATA_KEY for p in proto.metadata_props)
    from edgeface.runtime.backends import tflite_metadata

    try:
        return METADATA_KEY in tflite_metadata(data)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error):
        raise EdgefaceError(f"{printable(path)} is not a readable TFLite model") from None


def with_spec(path: Path, data: bytes, spec: ModelSpec) -> bytes:
    """The artifact's bytes with `spec` embedded in place of its old one (edgeface.converters.metadata)."""
    from edgeface.converters import metadata

    if path.suffix.lower() == ".onnx":
        import onnx

        return metadata.embed_onnx_spec(onnx.load_from_string(data), spec).SerializeToString()
    return metadata.embed_tflite_spec(data, spec)


def write_artifact_spec(path: str | os.PathLike[str], spec: ModelSpec) -> list[Path]:
    """Replace the artifact's spec: the embedded one (when the file carries one) and the sidecar, both
    staged as temp files first and renamed only when both are complete, so a failure changes neither."""
    from edgeface.io import atomic_write_all, os_errors

    path = Path(path)
    with os_errors("read", path):
        data = path.read_bytes()
    outputs: list[tuple[Path, Callable[[str], Any]]] = []
    contents: dict[Path, bytes] = {}
    if embedded_spec_present(path, data):
        contents[path] = with_spec(path, data, spec)
    contents[spec_path_for(path)] = (spec.to_json() + "\n").encode("utf-8")
    manifest = _pack_manifest_after(path, contents)
    if manifest is not None:  # a pack's manifest is renamed in with the files it hashes
        contents[manifest[0]] = manifest[1]
    for out, blob in contents.items():
        outputs.append((out, lambda tmp, blob=blob: Path(tmp).write_bytes(blob)))
    return atomic_write_all(outputs)


def _pack_manifest_after(path: Path, contents: dict[Path, bytes]) -> tuple[Path, bytes] | None:
    """When the artifact sits in a pack, the pack's manifest with the new hashes of the rewritten files,
    so the pack still checks after a new threshold (else every later load reports it tampered)."""
    import dataclasses
    import hashlib

    from edgeface.runtime.pack import MANIFEST, FileEntry, find_pack

    found = find_pack(path)
    if found is None:
        return None
    pack, _ = found
    files = dict(pack.manifest.files)
    for out, blob in contents.items():
        name = out.name
        if name not in files:
            raise EdgefaceError(
                f"{pack.where}: {printable(name)} is not in its manifest; run edgeface pack again"
            )
        files[name] = FileEntry(hashlib.sha256(blob).hexdigest(), len(blob))
    manifest = dataclasses.replace(pack.manifest, files=files)
    return pack.root / MANIFEST, manifest.to_json().encode("utf-8")


def load_calibration_data(data_dir: str | os.PathLike[str]) -> Any:
    """An identity-folder dataset; an LFW root gives its compression split (identities outside the test
    folds), as `export --calib` does, so nobody calibrates on test identities by accident."""
    from edgeface.data.lfw import compression_split, is_lfw_root
    from edgeface.eval.dataset import from_paths, read_identity_folders

    root = Path(data_dir)
    if root.is_dir() and is_lfw_root(root):
        return from_paths(root / "aligned112", compression_split(root))
    return read_identity_folders(root)


def calibrate_artifact(
    artifact: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    fmr: float,
    aligned: bool = False,
    face_policy: str = "auto",
    detector: str | os.PathLike[str] | None = None,
    refine: bool | str | os.PathLike[str] = True,
    flip: bool = False,
    max_impostors: int = DEFAULT_IMPOSTORS,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    write: bool = True,
    confidence: float = DEFAULT_CONFIDENCE,
    replicates: int = DEFAULT_REPLICATES,
) -> dict[str, Any]:
    """Set the artifact's threshold at `fmr` on the impostor pairs of `data_dir` and write it into the
    artifact and its sidecar. Returns the calibration record (also stored in the spec's provenance).

    The threshold is the people-level bound of `rates.threshold_at_fmr_bound` at `confidence` (0: the
    point threshold): the impostor pairs of a dataset share its people, and the FMR a deployment sees is
    over other people, so the point estimate would miss the target about half the time."""
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.pipeline import batch_threads

    from edgeface.eval.acquire import acquire
    from edgeface.eval.dataset import make_pairs
    from edgeface.eval.folder_eval import pair_scores
    from edgeface.eval.rates import rate, threshold_at_fmr_bound

    if not 0.0 < fmr < 1.0:
        raise EdgefaceError(f"--fmr must be in (0, 1), got {fmr}")
    if not 0.0 <= confidence < 1.0:
        raise EdgefaceError(f"--confidence must be in [0, 1), got {confidence}")
    data = load_calibration_data(data_dir)  # layout errors before the artifact loads
    pairs = make_pairs(data.identity, max_impostors, seed)
    net_threads, workers = batch_threads(threads, not aligned)
    art = load_artifact(artifact, num_threads=net_threads)
    got = acquire(
        art,
        data.images,
        aligned,
        flip,
        face_policy,
        detector,
        refine,
        progress="embedding" if progress else None,
        workers=workers,
    )
    ok = got.ok
    imp = pairs.impostor[ok[pairs.impostor[:, 0]] & ok[pairs.impostor[:, 1]]]
    gen = (
        pairs.genuine[ok[pairs.genuine[:, 0]] & ok[pairs.genuine[:, 1]]]
        if len(pairs.genuine)
        else pairs.genuine
    )
    if len(imp) == 0:
        raise EdgefaceError(
            f"no impostor pairs: images of at least two identities in {printable(data_dir)} must give a face "
            f"({len(got.failures)} of {len(data.images)} images gave none)"
        )
    scores = pair_scores(got.embeddings, imp)
    t, bound = threshold_at_fmr_bound(
        scores, data.identity[imp], len(data.names), fmr, confidence, replicates, seed
    )
    threshold = _clip(bound)
    passed = int(np.count_nonzero(scores >= threshold))
    genuine = pair_scores(got.embeddings, gen) if len(gen) else np.zeros(0)
    fnmr = rate(int(np.count_nonzero(genuine < threshold)), genuine.size)
    old = art.spec
    record = {
        "by": "edgeface threshold",
        "data": printable(data_dir),
        "identities": len(data.names),
        "images": len(data.images),
        "images_without_face": len(got.failures),
        "aligned": aligned,
        "face_policy": None if aligned else face_policy,
        "flip": flip,
        "genuine_pairs": int(len(gen)),
        "impostor_pairs": t.impostors,
        "impostor_possible": pairs.impostor_possible,
        "impostor_sampled": pairs.sampled,
        "seed": seed,
        "fmr_target": fmr,
        "confidence": confidence,
        "bootstrap_replicates": replicates if confidence > 0 else 0,
        "threshold_point": _clip(t.threshold),
        "false_matches": passed,
        "fmr_achieved": passed / t.impostors,
        "fmr_reachable": 1.0 / t.impostors,
        "resolved": t.resolved,
        "fnmr": fnmr,
        "previous_threshold": old.threshold,
        "previous_threshold_far": old.threshold_far,
    }
    spec = old.replace(
        threshold=threshold,
        threshold_far=fmr,
        provenance={**old.provenance, "threshold_calibration": dict(record)},
    )
    record["threshold"] = threshold
    record["failed_images"] = got.failures_json()
    if write:
        written = write_artifact_spec(artifact, spec)
        reread = load_artifact(artifact, num_threads=1).spec  # what the device will read
        if reread.threshold != threshold:
            raise EdgefaceError(
                f"{printable(artifact)}: the rewritten spec does not read back (internal error)"
            )
        record["written"] = [printable(p) for p in written]
    return record
