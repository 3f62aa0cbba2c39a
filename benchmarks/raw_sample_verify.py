"""Verification through the whole on-device pipeline (YuNet detection, alignment, artifact, cosine) on
every same-identity and different-identity pair of the raw LFW photos in ../shared/data/lfw/raw_sample,
at the artifact's own calibrated threshold. Acceptance for issue 5: >= 99 % correct decisions.

    python benchmarks/raw_sample_verify.py --model ARTIFACT [--face POLICY] [--json]

Each photo is embedded once (the face `--face` picks, `auto` by default, as `edgeface verify` does), then
all C(60, 2) pairs are scored: the same decisions `edgeface verify` would print for each pair, without
re-running the network per pair. benchmarks/face_selection.py compares the policies.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from edgeface.runtime.backends import load_artifact
from edgeface.runtime.match import verify
from edgeface.runtime.pipeline import Pipeline
from edgeface.runtime.select import POLICIES

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "raw_sample"


def run(
    model: str,
    raw: Path = RAW,
    threshold: float | None = None,
    flip: bool = False,
    refine: bool = True,
    face: str = "auto",
) -> dict:
    artifact = load_artifact(model)
    warnings: list[str] = []
    pipe = Pipeline(artifact, warn=warnings.append, flip=flip, refine_landmarks=refine, face=face)
    photos = sorted(raw.rglob("*.jpg"))
    emb = {p: pipe.embed_image(p).embedding for p in photos}
    thr = threshold if threshold is not None else artifact.spec.threshold
    same = diff = same_ok = diff_ok = 0
    errors = []
    for a, b in itertools.combinations(photos, 2):
        d = verify(emb[a], emb[b], thr)
        truth = a.parent.name == b.parent.name
        ok = d.match == truth
        if truth:
            same, same_ok = same + 1, same_ok + ok
        else:
            diff, diff_ok = diff + 1, diff_ok + ok
        if not ok:
            errors.append(
                {
                    "left": f"{a.parent.name}/{a.name}",
                    "right": f"{b.parent.name}/{b.name}",
                    "score": round(d.score, 4),
                    "same": truth,
                }
            )
    total = same + diff
    return {
        "model": str(model),
        "precision": artifact.spec.precision,
        "backend": artifact.backend,
        "threshold": thr,
        "flip": flip,
        "refine_landmarks": refine,
        "face_policy": face,
        "photos": len(photos),
        "pairs": total,
        "same_pairs": same,
        "different_pairs": diff,
        "correct_rate": (same_ok + diff_ok) / total,
        "true_accept_rate": same_ok / same,
        "true_reject_rate": diff_ok / diff,
        "multi_face_photos": len(warnings),
        "errors": errors,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="raw_sample verification through detection")
    ap.add_argument("--model", required=True, help="artifact (.onnx/.tflite with its spec)")
    ap.add_argument("--threshold", type=float, default=None, help="override the artifact's threshold")
    ap.add_argument("--flip", action="store_true", help="add the mirrored face's embedding")
    ap.add_argument("--no-refine", action="store_true", help="YuNet landmarks without re-detection")
    ap.add_argument("--face", default="auto", choices=POLICIES[:-1], help="face policy (default auto)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.model, threshold=a.threshold, flip=a.flip, refine=not a.no_refine, face=a.face)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"{r['model']} ({r['precision']}, {r['backend']}) threshold {r['threshold']:.4f}"
        f"{', flip' if r['flip'] else ''}{'' if r['refine_landmarks'] else ', no landmark refinement'}"
        f", --face {r['face_policy']}"
    )
    print(
        f"{r['pairs']} pairs ({r['same_pairs']} same, {r['different_pairs']} different) "
        f"from {r['photos']} photos"
    )
    print(
        f"correct decisions {100 * r['correct_rate']:.2f} %  "
        f"(same accepted {100 * r['true_accept_rate']:.2f} %, "
        f"different rejected {100 * r['true_reject_rate']:.2f} %)"
    )
    for e in r["errors"]:
        print(
            f"  wrong: {e['left']} vs {e['right']} score {e['score']} "
            f"({'same' if e['same'] else 'different'})"
        )
    print(f"photos with several faces ({r['face_policy']} policy): {r['multi_face_photos']}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
