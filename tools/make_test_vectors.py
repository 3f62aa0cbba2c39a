"""Write the shared test vectors that the Python tests and the Android app's unit tests both check.

The Kotlin app re-implements the small part of the runtime a phone needs (spec parsing, normalisation,
int8 (de)quantization, five-point alignment, cosine matching). These vectors pin that contract to numbers
computed by the Python runtime, so the two cannot drift apart unnoticed: tests/test_deploy_vectors.py
recomputes every number here with `edgeface.runtime` and the app's JVM tests
(android_demo/core/src/test) compare their own results to the same file.

Only derived numbers are committed (landmark coordinates, matrices, checksums, embeddings); images are
referenced by their path inside ../shared and re-read at test time, and the preprocessing input is a
synthetic pattern that both languages generate from a formula, so no pixels need to be shipped.

    python benchmarks/reference_artifact.py /tmp/ref            # fp32 artifact + calibrated threshold
    edgeface export --int8 --model mobilefacenet --weights ../shared/models/mobilefacenet_ms1m.pt \
        --calib ../shared/data/lfw -o artifacts/                # the README quick start
    python tools/make_test_vectors.py --artifact /tmp/ref/mobilefacenet_ms1m_fp32.onnx \
        --artifact artifacts/mobilefacenet_int8.tflite --artifact artifacts/mobilefacenet_int8.onnx

The first artifact must be the fp32 reference: the tests re-embed its faces from ../shared on every run.
The exported ones are not in the repository, so their sections are checked for internal consistency and
agreement with fp32 (cosine > 0.95); regenerate after changing the exporter.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from edgeface.runtime.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from edgeface.runtime.backends import Artifact, load_artifact
from edgeface.runtime.match import cosine_similarity, verify
from edgeface.runtime.preprocess import l2_normalize, normalize, read_image

from edgeface.spec import ModelSpec, TensorQuant

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
LFW = SHARED / "data" / "lfw"
OUT = ROOT / "tests" / "data" / "vectors"
FORMAT = 1

# Raw LFW photos (shared/data/lfw/raw_sample) used for alignment and embeddings: two photos of one person
# and one of another give a genuine and an impostor pair.
FACES = (
    "Anna_Kournikova/Anna_Kournikova_0001.jpg",
    "Anna_Kournikova/Anna_Kournikova_0002.jpg",
    "Benjamin_Netanyahu/Benjamin_Netanyahu_0001.jpg",
)
PAIRS = ((0, 1), (0, 2), (1, 2))
ALIGN_EXTRA = ("Antonio_Palocci/Antonio_Palocci_0001.jpg",)  # one more landmark set for the matrix check
# Flat indices into a 1x112x112x3 tensor sampled for exact comparison (corners, channel and row seams).
SAMPLE_INDICES = (0, 1, 2, 3, 111, 112, 335, 336, 12543, 12544, 25087, 25088, 37631)
DECISION_MARGIN = 0.05  # a pair this close to the threshold would make the expected decision fragile


def pattern_bgr(height: int, width: int) -> np.ndarray:
    """The synthetic test image: pixel (y, x) channel c (0=B, 1=G, 2=R) = (7x + 13y + 61c + 17) mod 256.

    Every value 0..255 occurs in every channel and neighbouring pixels differ, so a swapped channel order,
    transposed layout or off-by-one row shows up in the checksums. The Kotlin tests build the same image.
    """
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((7 * x + 13 * y + 61 * c + 17) % 256).astype(np.uint8)


def tensor_summary(t: np.ndarray) -> dict[str, Any]:
    """Checksums and a few exact values: enough to catch any layout or arithmetic mistake, small."""
    flat = np.ravel(t)
    f64 = flat.astype(np.float64)
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype),
        "sum": float(f64.sum()),
        "sum_squares": float((f64**2).sum()),
        "weighted_sum": float((f64 * (np.arange(flat.size) % 97)).sum()),  # order-sensitive
        "samples": [[int(i), flat[i].item()] for i in SAMPLE_INDICES if i < flat.size],
    }


def landmarks_of(files: tuple[str, ...]) -> dict[str, np.ndarray]:
    wanted = set(files)
    found: dict[str, np.ndarray] = {}
    with open(LFW / "landmarks.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = row["file"]
            if name in wanted:
                found[name] = np.array([float(v) for k, v in row.items() if k != "file"]).reshape(5, 2)
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"no landmarks in landmarks.csv for {sorted(missing)}")
    return found


def quantization_cases() -> list[dict[str, Any]]:
    """Rounding ties (numpy rounds half to even; Kotlin's Math.round does not), clipping and both dtypes."""
    ties = np.array([0.25, 0.75, -0.25, -0.75, 1.25, 63.75, -64.25, 0.0], np.float32)
    rng = np.random.default_rng(0)
    realistic = rng.uniform(-2.2, 2.7, 12).astype(np.float32)  # the range of ImageNet-normalised pixels
    cases = []
    for tq, x in (
        (TensorQuant(scale=0.5, zero_point=0, dtype="int8"), ties),
        (
            TensorQuant(scale=0.5, zero_point=3, dtype="int8"),
            np.array([70.0, -70.0, 0.75, -0.75], np.float32),
        ),
        (
            TensorQuant(scale=0.25, zero_point=128, dtype="uint8"),
            np.array([-40.0, 0.125, 0.375, 40.0], np.float32),
        ),
        (TensorQuant(scale=0.018658, zero_point=-14, dtype="int8"), realistic),
    ):
        q = tq.quantize(x)
        cases.append(
            {
                "scale": tq.scale,
                "zero_point": tq.zero_point,
                "dtype": tq.dtype,
                "x": [float(v) for v in x],
                "q": [int(v) for v in q],
                "dequantized": [float(v) for v in tq.dequantize(q)],
            }
        )
    return cases


# Specs the Kotlin parser must reject exactly as edgeface.spec.validate does (the first bad field).
INVALID_SPECS: list[tuple[str, dict[str, Any]]] = [
    ("schema_version", {"schema_version": 2}),
    ("layout", {"layout": "HWC"}),
    ("channel_order", {"channel_order": "rgb"}),
    ("std", {"std": [0.5, 0.0, 0.5]}),
    ("mean", {"mean": [0.5, 0.5]}),
    ("mean", {"channel_order": "GRAY"}),  # GRAY takes one mean and one std value
    ("std", {"channel_order": "GRAY", "mean": [0.5]}),
    ("embedding_dim", {"embedding_dim": 0}),
    ("threshold", {"threshold": 1.5}),
    ("input_size", {"input_size": [112, 100000]}),
    ("face_crop", {"face_crop": [0, 0, 112, 100]}),
    ("threshold_far", {"threshold_far": 0}),
    ("quantization.input", {"quantization": {"input": {"scale": 0.1, "zero_point": 0}}}),
    ("quantization.input.scale", {"quantization": {"input": {"scale": 0, "zero_point": 0, "dtype": "int8"}}}),
    (
        "quantization.input.zero_point",
        {"quantization": {"input": {"scale": 0.1, "zero_point": "7", "dtype": "int8"}}},
    ),
    (
        "quantization.output.dtype",
        {"quantization": {"output": {"scale": 0.1, "zero_point": 0, "dtype": "int4"}}},
    ),
]


def invalid_spec_cases(base: dict[str, Any]) -> list[dict[str, Any]]:
    cases = [{"field": "name", "spec": {k: v for k, v in base.items() if k != "name"}}]
    for field, change in INVALID_SPECS:
        cases.append({"field": field, "spec": {**base, **change}})
    return cases


def synthetic_int8_spec(base: ModelSpec) -> ModelSpec:
    """NHWC + BGR + int8 in and out: the code paths the fp32 reference spec does not reach."""
    return base.replace(
        name="synthetic_nhwc_bgr_int8",
        layout="NHWC",
        channel_order="BGR",
        precision="w8a8",
        input_quant=TensorQuant(scale=0.018658, zero_point=-14, dtype="int8"),
        output_quant=TensorQuant(scale=0.0625, zero_point=5, dtype="int8"),
        provenance={"source": "tools/make_test_vectors.py (synthetic, no artifact)"},
    )


def synthetic_gray_spec(base: ModelSpec) -> ModelSpec:
    """GRAY (one channel, the pixel's luma) + NCHW + int8 input: a LightCNN-style grayscale model."""
    return base.replace(
        name="synthetic_gray_int8",
        channel_order="GRAY",
        mean=(0.0,),
        std=(1.0,),
        precision="w8a8",
        input_quant=TensorQuant(scale=0.003921569, zero_point=-128, dtype="int8"),
        output_quant=None,
        provenance={"source": "tools/make_test_vectors.py (synthetic, no artifact)"},
    )


def preprocess_case(spec_file: str, spec: ModelSpec) -> dict[str, Any]:
    h, w = spec.input_size
    x = normalize([pattern_bgr(h, w)], spec)
    case: dict[str, Any] = {"spec": spec_file, "image": "pattern", "float": tensor_summary(x)}
    if spec.input_quant is not None:
        case["quantized"] = tensor_summary(spec.input_quant.quantize(x))
    return case


def embed_faces(artifact: Artifact, landmarks: dict[str, np.ndarray]) -> np.ndarray:
    h, w = artifact.spec.input_size
    crops = [align_face(read_image(LFW / "raw_sample" / f), landmarks[f], (h, w)) for f in FACES]
    # One face per call, as on the device (and some TFLite graphs cannot be resized to a larger batch).
    return np.concatenate([artifact.run(normalize([c], artifact.spec)) for c in crops])


def _rounded(v: np.ndarray) -> list[float]:
    """7 decimals: 1000x finer than the embedding tolerance, and a third of the file size."""
    return [round(float(x), 7) for x in v]


def artifact_section(path: Path, spec_file: str, landmarks: dict[str, np.ndarray]) -> dict[str, Any]:
    artifact = load_artifact(path)
    spec = artifact.spec
    if spec.threshold is None:
        raise SystemExit(f"{path}: its spec has no threshold; the pair decisions need one")
    raw = embed_faces(artifact, landmarks)
    emb = l2_normalize(raw)
    pairs = []
    for a, b in PAIRS:
        d = verify(emb[a], emb[b], spec.threshold)
        if abs(d.score - d.threshold) < DECISION_MARGIN:
            raise SystemExit(
                f"pair {FACES[a]} / {FACES[b]}: cosine {d.score:.3f} is too close to the threshold"
            )
        pairs.append({"a": a, "b": b, "cosine": d.score, "match": d.match})
    h, w = spec.input_size
    pattern_raw = artifact.run(normalize([pattern_bgr(h, w)], spec))[0]
    section: dict[str, Any] = {
        "artifact": path.name,
        "spec": spec_file,
        "threshold": spec.threshold,
        "faces": [
            {"image": f"data/lfw/raw_sample/{f}", "embedding": _rounded(e)}
            for f, e in zip(FACES, emb, strict=True)
        ],
        "pairs": pairs,
        # What the on-device instrumented test compares: the whole interpreter path on the pattern image.
        "pattern_embedding": _rounded(l2_normalize(pattern_raw)),
    }
    if spec.output_quant is not None:  # raw integer outputs, for the app's dequantize-then-normalise test
        section["raw_output"] = [[int(v) for v in spec.output_quant.quantize(r)] for r in raw]
    return section


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are committed and read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--artifact",
        type=Path,
        action="append",
        required=True,
        help="an exported artifact with its spec (repeat for several); the first must be fp32",
    )
    ap.add_argument("-o", "--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    landmarks = landmarks_of(FACES + ALIGN_EXTRA)
    specs: dict[str, ModelSpec] = {}
    sections = []
    for path in args.artifact:
        spec = load_artifact(path).spec
        spec_file = f"{path.name}.json"
        specs[spec_file] = spec
        sections.append(artifact_section(path, spec_file, landmarks))
    base = specs[f"{args.artifact[0].name}.json"]
    specs["synthetic_nhwc_bgr_int8.json"] = synthetic_int8_spec(base)
    specs["synthetic_gray_int8.json"] = synthetic_gray_spec(base)

    vectors = {
        "format": FORMAT,
        "generated_by": "tools/make_test_vectors.py",
        "pattern": {"formula": "(7*x + 13*y + 61*c + 17) % 256, c: 0=B 1=G 2=R", "dtype": "uint8"},
        "specs": sorted(specs),
        "invalid_specs": invalid_spec_cases(base.to_dict()),
        "preprocess": [preprocess_case(f, s) for f, s in sorted(specs.items())],
        "quantization": quantization_cases(),
        "alignment": [
            {
                "image": f"data/lfw/raw_sample/{f}",
                "landmarks": landmarks[f].tolist(),
                "template": ARCFACE_TEMPLATE.tolist(),
                "matrix": similarity_transform(landmarks[f], ARCFACE_TEMPLATE).tolist(),
            }
            for f in FACES + ALIGN_EXTRA
        ],
        "cosine": [
            {
                "a": [1.0, 2.0, 3.0],
                "b": [3.0, -1.0, 0.5],
                "cosine": cosine_similarity(np.array([1.0, 2.0, 3.0]), np.array([3.0, -1.0, 0.5])),
            },
        ],
        "artifacts": sections,
        "tolerance": {"float": 1e-4, "matrix": 1e-6, "embedding": 1e-4, "cosine": 1e-5},
    }
    for name, spec in specs.items():
        write_atomic(args.out / name, spec.to_json() + "\n")
    write_atomic(args.out / "vectors.json", json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {args.out / 'vectors.json'} and {len(specs)} specs")


if __name__ == "__main__":
    main()
