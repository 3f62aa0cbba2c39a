"""Face selection (issue 15): FRR and FAR at the artifact's shipped threshold for every `--face` policy,
on the raw LFW photos of ../shared and on multi-face scenes composed from them, against the same photos
pre-aligned (their aligned112 twins, aligned with the reference landmarks: no detection, no choice), and
against the raw photos aligned by the runtime from those reference landmarks (landmark precision alone).

    python benchmarks/face_selection.py --model ARTIFACT [--threads 1] [--scenes raw,border,...] [--json]
    python benchmarks/face_selection.py --sweep     # which face `auto` takes, per score power (no model)

Every photo goes through `Pipeline.embed_faces` (decode, YuNet, the policy, refinement, alignment, the
artifact), exactly as `edgeface verify` runs it, once per policy; then all C(60, 2) = 1,770 pairs
(120 same-identity, 1,650 different) are decided at the threshold in the artifact's spec. Under `all` a
pair is accepted when any face of one photo matches any face of the other (`Pipeline.verify`).

Scenes (each of the 60 photos in turn is the subject; the distractor, always another identity, comes from
`distractor`; scenes are written as PNG, so nothing is lost to compression):
- `raw`: the photo itself (LFW photos are framed on their subject; 13 of the 60 have other faces).
- `border`: the photo in the middle of a 400x300 frame, plus another person's face 1.25x larger than the
  subject's, cut by the left or right border by 15, 30 or 45 % of its width (the issue's failure).
- `camera`: a 640x480 frame with one dominant face, the subject's (170 px wide, centred at 25 % of the
  width from the left or right), and another face 0.35, 0.5 or 0.65x its size near the centre.
- `side-by-side`: the photo and the distractor's photo side by side (500x250): two faces of about equal
  size at equal distance from the centre, so no geometric rule can know the subject.
- `border-hard`, `camera-hard` (for --sweep): a distractor 1.5x the subject cut by only 10-20 %; a subject
  at 20 % of the width only 1.33-1.54x larger than a central face. Both are close to ambiguous.

"subject chosen" checks the first face a policy takes against the subject's reference landmarks
(landmarks.csv, moved into the scene): within 0.5 inter-ocular distances on average.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import ARCFACE_TEMPLATE, align_face
from edgeface.runtime.backends import artifact_embedder, load_artifact
from edgeface.runtime.match import cosine_similarity as cosine
from edgeface.runtime.pipeline import Pipeline
from edgeface.runtime.select import CENTRE_ABOVE_CENTROID, POLICIES, WIDTH_PER_IOD

from edgeface.errors import EdgefaceError

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw"
RAW = LFW / "raw_sample"
MIN_VISIBLE = 0.9  # `all` rows also count false accepts between faces at least this much in the frame
SCENES = ("raw", "border", "camera", "side-by-side")
SWEEP_SCENES = ("raw", "border", "camera", "border-hard", "camera-hard")
T = ARCFACE_TEMPLATE
TEMPLATE_IOD_PER_EYE_MOUTH = float(
    np.linalg.norm(T[0] - T[1]) / np.linalg.norm((T[0] + T[1] - T[3] - T[4]) / 2)
)


def distractor(photos: list[Path], i: int) -> int:
    """The photo whose face joins photo i's scene: the t-th photo of the identity 1 + t places further in
    sorted order, t = i's rank within its own identity. Always someone else, and the photos of one
    identity get distractors of different identities, so in a same-identity pair the two distractors are
    never one person (which `all` would otherwise count as a match)."""
    names = sorted({p.parent.name for p in photos})
    by_name = {n: [k for k, p in enumerate(photos) if p.parent.name == n] for n in names}
    own = photos[i].parent.name
    t = by_name[own].index(i)
    other = by_name[names[(names.index(own) + 1 + t) % len(names)]]
    return other[t % len(other)]


def reference_landmarks(lfw: Path = LFW) -> dict[str, np.ndarray]:
    """landmarks.csv: 'Name/Name_0001.jpg' -> (5, 2) in the raw 250x250 photo."""
    with open(lfw / "landmarks.csv") as f:
        return {
            r["file"]: np.array([float(v) for v in list(r.values())[1:]]).reshape(5, 2)
            for r in csv.DictReader(f)
        }


def face_centre_size(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and width (px) of the face box the five landmarks imply (the constants of runtime.select).
    The width comes from the eye-to-mouth distance too (x IOD / eye-mouth of the ArcFace template), so a
    face in profile, whose eyes nearly overlap, is not mistaken for a small one."""
    iod = float(np.linalg.norm(lm[0] - lm[1]))
    eye_mouth = float(np.linalg.norm((lm[0] + lm[1]) / 2 - (lm[3] + lm[4]) / 2))
    centre = lm.mean(0) - [0.0, CENTRE_ABOVE_CENTROID * eye_mouth]
    return centre, WIDTH_PER_IOD * max(iod, TEMPLATE_IOD_PER_EYE_MOUTH * eye_mouth)


def paste(
    canvas: np.ndarray,
    photo: np.ndarray,
    lm: np.ndarray,
    centre: tuple[float, float],
    face_px: float,
    region: float | None = None,
) -> np.ndarray:
    """Draw `photo` into `canvas` (in place) scaled so its face is `face_px` wide and centred at `centre`;
    only a square `region` x the face size around the face when given. Returns the landmarks in `canvas`."""
    c, size = face_centre_size(lm)
    s = face_px / size
    if region is not None:
        half = region * size / 2
        x0, y0 = (max(0, int(v - half)) for v in c)
        x1, y1 = int(min(photo.shape[1], c[0] + half)), int(min(photo.shape[0], c[1] + half))
        photo, c, lm = photo[y0:y1, x0:x1], c - [x0, y0], lm - [x0, y0]
    m = np.array([[s, 0.0, centre[0] - s * c[0]], [0.0, s, centre[1] - s * c[1]]])
    h, w = canvas.shape[:2]
    cv2.warpAffine(
        photo,
        m,
        (w, h),
        dst=canvas,
        flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_TRANSPARENT,
    )
    return lm * s + m[:, 2]


def background(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A plausible, faceless backdrop: the photo's own colours, blurred beyond recognition."""
    return cv2.GaussianBlur(cv2.resize(photo, (width, height)), (0, 0), 25)


# border: (distractor face size / subject's, fractions of its width cut by the border, one per variant)
BORDER = {"border": (1.25, (0.15, 0.30, 0.45)), "border-hard": (1.5, (0.10, 0.15, 0.20))}
# camera: (subject's face centre, fraction of the width from the nearer side; distractor size / subject's)
CAMERA = {"camera": (0.25, (0.35, 0.50, 0.65)), "camera-hard": (0.20, (0.65, 0.70, 0.75))}


def compose(
    scene: str, subject: np.ndarray, lm: np.ndarray, other: np.ndarray, other_lm: np.ndarray, variant: int
) -> tuple[np.ndarray, np.ndarray]:
    """(scene image, the subject's landmarks in it); `variant` (0, 1, 2, ...) picks the side (even: the
    distractor left in `border`, the subject left in `camera`) and the sizes (variant % 3)."""
    _, size = face_centre_size(lm)
    if scene == "raw":
        return subject.copy(), lm
    if scene in BORDER:
        w, h = 400, 300
        canvas = background(subject, w, h)
        ox, oy = (w - subject.shape[1]) // 2, (h - subject.shape[0]) // 2
        canvas[oy : oy + subject.shape[0], ox : ox + subject.shape[1]] = subject
        ratio, cuts = BORDER[scene]
        big = ratio * size
        cut = cuts[variant % 3]
        x = (0.5 - cut) * big if variant % 2 == 0 else w - (0.5 - cut) * big
        paste(canvas, other, other_lm, (x, h / 2 - 0.1 * big), big, region=1.6)  # clear of the subject
        return canvas, lm + [ox, oy]
    if scene in CAMERA:
        w, h = 640, 480
        canvas = background(subject, w, h)
        pos, ratios = CAMERA[scene]
        left = variant % 2 == 0
        sub_lm = paste(canvas, subject, lm, (pos * w if left else (1 - pos) * w, 0.5 * h), 170.0, region=2.0)
        small = ratios[variant % 3] * 170.0
        paste(canvas, other, other_lm, (0.6 * w if left else 0.4 * w, 0.45 * h), small, region=2.0)
        return canvas, sub_lm
    if scene == "side-by-side":
        canvas = np.concatenate([subject, cv2.resize(other, subject.shape[1::-1])], axis=1)
        return canvas, lm
    raise ValueError(f"unknown scene {scene!r}")


def _is_subject(face_lm: np.ndarray, truth: np.ndarray) -> bool:
    iod = float(np.linalg.norm(truth[0] - truth[1]))
    return float(np.linalg.norm(face_lm - truth, axis=1).mean()) < 0.5 * iod


def _rates(
    photos: list[Path], accept: dict[tuple[int, int], bool], people: list[set[str]] | None = None
) -> dict:
    """FRR over same-subject pairs, FAR over different-subject pairs; with `people` (everyone composed into
    each scene) also the false accepts of pairs that share nobody, since under `all` a pair whose scenes
    both show the same distractor (or one's distractor is the other's subject) rightly matches."""
    fr = fa = same = diff = strangers = fa_strangers = 0
    for i, j in itertools.combinations(range(len(photos)), 2):
        truth = photos[i].parent.name == photos[j].parent.name
        if truth:
            same += 1
            fr += not accept[i, j]
        else:
            diff += 1
            fa += accept[i, j]
            if people is not None and not people[i] & people[j]:
                strangers += 1
                fa_strangers += accept[i, j]
    r = {
        "same_pairs": same,
        "different_pairs": diff,
        "false_rejects": fr,
        "frr": fr / same,
        "false_accepts": fa,
        "far": fa / diff,
    }
    if people is not None:
        r.update(
            stranger_pairs=strangers,
            stranger_false_accepts=fa_strangers,
            stranger_far=fa_strangers / max(strangers, 1),
        )
    return r


def run(
    model: str,
    threads: int | None = 1,
    raw: Path = RAW,
    scenes: tuple[str, ...] = SCENES,
    landmarker: str | None = None,
) -> dict:
    artifact = load_artifact(model, num_threads=threads)
    thr = artifact.spec.threshold
    if thr is None:
        raise EdgefaceError(f"{model} has no calibrated threshold in its spec")
    photos = sorted(raw.rglob("*.jpg"))
    marks = reference_landmarks(raw.parent)
    rel = [f"{p.parent.name}/{p.name}" for p in photos]

    aligned = artifact_embedder(artifact)([raw.parent / "aligned112" / r for r in rel])
    result: dict = {
        "model": str(model),
        "precision": artifact.spec.precision,
        "threshold": thr,
        "photos": len(photos),
        "pre_aligned": _rates(
            photos,
            {
                (i, j): cosine(aligned[i], aligned[j]) >= thr
                for i, j in itertools.combinations(range(len(photos)), 2)
            },
        ),
        "scenes": {},
    }
    images = [cv2.imread(str(p)) for p in photos]
    # the raw photos aligned by our runtime from the reference landmarks: no detector, so what separates
    # this row from the detected ones is landmark precision alone
    from_csv = artifact.embed(
        [
            align_face(im, marks[r], artifact.spec.input_size, artifact.spec.crop_box())
            for im, r in zip(images, rel, strict=True)
        ]
    )
    result["reference_landmarks"] = _rates(
        photos,
        {
            (i, j): cosine(from_csv[i], from_csv[j]) >= thr
            for i, j in itertools.combinations(range(len(photos)), 2)
        },
    )
    with tempfile.TemporaryDirectory(prefix="edgeface-faces-") as tmp:
        for scene in scenes:
            files, truths, people = [], [], []
            for i in range(len(photos)):
                k = distractor(photos, i)
                people.append(
                    {photos[i].parent.name} | (set() if scene == "raw" else {photos[k].parent.name})
                )
                img, truth = compose(scene, images[i], marks[rel[i]], images[k], marks[rel[k]], i)
                f = Path(tmp) / f"{scene}-{i:02d}.png"
                cv2.imwrite(str(f), img)
                files.append(f)
                truths.append(truth)
            rows: dict[str, dict] = {}
            for policy in POLICIES:
                warnings: list[str] = []
                pipe = Pipeline(
                    artifact, warn=warnings.append, face=policy, refine_landmarks=landmarker or True
                )
                faces = [pipe.embed_faces(f) for f in files]
                accept = {
                    (i, j): any(cosine(a.embedding, b.embedding) >= thr for a in faces[i] for b in faces[j])
                    for i, j in itertools.combinations(range(len(files)), 2)
                }
                chosen = (
                    [
                        any(_is_subject(e.face.landmarks, t) for e in fs)
                        for fs, t in zip(faces, truths, strict=True)
                    ]
                    if policy == "all"
                    else [_is_subject(fs[0].face.landmarks, t) for fs, t in zip(faces, truths, strict=True)]
                )
                rows[policy] = {
                    **_rates(photos, accept, people),
                    **(
                        {
                            "stranger_false_accepts_visible_faces": _rates(
                                photos,
                                {
                                    (i, j): any(
                                        cosine(a.embedding, b.embedding) >= thr
                                        for a in faces[i]
                                        for b in faces[j]
                                        if min(a.visible, b.visible) >= MIN_VISIBLE
                                    )
                                    for i, j in itertools.combinations(range(len(files)), 2)
                                },
                                people,
                            )["stranger_false_accepts"]
                        }
                        if policy == "all"
                        else {}
                    ),
                    "subject_chosen": int(sum(chosen)),
                    # where the subject was taken: how far its landmarks are from the reference ones
                    "landmark_error_iod_median": float(
                        np.median(
                            [
                                np.linalg.norm(e.face.landmarks - t, axis=1).mean()
                                / np.linalg.norm(t[0] - t[1])
                                for fs, t in zip(faces, truths, strict=True)
                                for e in fs[:1]
                                if _is_subject(e.face.landmarks, t)
                            ]
                            or [np.nan]
                        )
                    ),
                    "multi_face_photos": int(sum(fs[0].faces_found > 1 for fs in faces)),
                    "wrong_face": [files[i].stem for i, ok in enumerate(chosen) if not ok],
                }
            result["scenes"][scene] = rows
    return result


def choice_sweep(
    powers: tuple[tuple[float, float], ...] = tuple((c, v) for c in (0.5, 1.0, 1.5, 2.0) for v in (2.0, 4.0)),
    scenes: tuple[str, ...] = SWEEP_SCENES,
    raw: Path = RAW,
) -> dict:
    """How often `auto` takes the subject, per (CENTRE_POWER, VISIBLE_POWER), with the other policies for
    reference: detection only (no artifact), every photo with its three variants (raw: the photo)."""
    from edgeface.runtime import select
    from edgeface.runtime.detect import YuNetDetector

    det = YuNetDetector()
    photos = sorted(raw.rglob("*.jpg"))
    marks = reference_landmarks(raw.parent)
    rel = [f"{p.parent.name}/{p.name}" for p in photos]
    images = [cv2.imread(str(p)) for p in photos]
    cases: dict[str, list] = {}
    for scene in scenes:
        rows = []
        for i in range(len(photos)):
            k = distractor(photos, i)
            for v in [i] if scene == "raw" else [i, i + 1, i + 2]:
                img, truth = compose(scene, images[i], marks[rel[i]], images[k], marks[rel[k]], v)
                faces = det.detect(img)
                if len(faces) > 1:  # one face: every policy takes it
                    rows.append((faces, img.shape[1], img.shape[0], truth))
        cases[scene] = rows

    def chosen(policy: str) -> dict[str, int]:
        return {
            s: sum(_is_subject(select.rank(f, policy, w, h)[0].landmarks, t) for f, w, h, t in rows)
            for s, rows in cases.items()
        }

    saved = select.CENTRE_POWER, select.VISIBLE_POWER
    try:
        grid = []
        for c, v in powers:
            select.CENTRE_POWER, select.VISIBLE_POWER = c, v
            grid.append({"centre_power": c, "visible_power": v, "subject_chosen": chosen("auto")})
    finally:
        select.CENTRE_POWER, select.VISIBLE_POWER = saved
    return {
        "multi_face_images": {s: len(rows) for s, rows in cases.items()},
        "shipped": {"centre_power": saved[0], "visible_power": saved[1]},
        "auto": grid,
        "policies": {p: chosen(p) for p in ("largest", "center", "highest-score")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="FRR/FAR per --face policy on raw and composed photos")
    ap.add_argument("--model", help="artifact (.onnx/.tflite with its spec)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scenes", default=None, help=f"comma-separated, of {SCENES + SWEEP_SCENES[3:]}")
    ap.add_argument("--sweep", action="store_true", help="auto's choices per score power, no model needed")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--landmarker", help="face-mesh model (edgeface --landmarker) instead of YuNet refinement"
    )
    a = ap.parse_args()
    scenes = tuple(s for s in a.scenes.split(",") if s) if a.scenes else None
    if a.sweep:
        r = choice_sweep(scenes=scenes or SWEEP_SCENES)
        if a.json:
            print(json.dumps(r, indent=2))
            return
        n = r["multi_face_images"]
        print("multi-face images (subject chosen / images):")
        print("| policy | " + " | ".join(n) + " |")
        print("|---|" + "---:|" * len(n))
        for g in r["auto"]:
            mark = (
                " (shipped)"
                if (g["centre_power"], g["visible_power"]) == tuple(r["shipped"].values())
                else ""
            )
            label = f"auto, (1 - d)^{g['centre_power']:g} x visible^{g['visible_power']:g}{mark}"
            print(f"| {label} | " + " | ".join(f"{g['subject_chosen'][s]}/{n[s]}" for s in n) + " |")
        for p, c in r["policies"].items():
            print(f"| {p} | " + " | ".join(f"{c[s]}/{n[s]}" for s in n) + " |")
        return
    if not a.model:
        ap.error("--model is required (except with --sweep)")
    r = run(a.model, a.threads, scenes=scenes or SCENES, landmarker=a.landmarker)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    pa = r["pre_aligned"]
    print(
        f"{r['model']} ({r['precision']}), shipped threshold {r['threshold']:.4f}, {r['photos']} photos, "
        f"landmarks: {a.landmarker or 'YuNet with refinement'}"
    )
    print(
        f"pre-aligned (aligned112): FRR {100 * pa['frr']:.2f} % ({pa['false_rejects']}/{pa['same_pairs']}), "
        f"FAR {100 * pa['far']:.2f} % ({pa['false_accepts']}/{pa['different_pairs']})"
    )
    rl = r["reference_landmarks"]
    print(
        f"raw photos aligned from landmarks.csv (no detector): FRR {100 * rl['frr']:.2f} % "
        f"({rl['false_rejects']}/{rl['same_pairs']}), FAR {100 * rl['far']:.2f} % "
        f"({rl['false_accepts']}/{rl['different_pairs']})"
    )
    print(
        "| scene | policy | subject chosen | landmark error (median IOD) | false rejects | FRR "
        "| false accepts | FAR | false accepts between strangers |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for scene, rows in r["scenes"].items():
        for policy, m in rows.items():
            print(
                f"| {scene} | {policy} | {m['subject_chosen']}/{r['photos']} | "
                f"{m['landmark_error_iod_median']:.3f} | {m['false_rejects']} | "
                f"{100 * m['frr']:.2f} % | {m['false_accepts']} | {100 * m['far']:.2f} % | "
                f"{m['stranger_false_accepts']}/{m['stranger_pairs']} |"
            )
    for scene, rows in r["scenes"].items():
        if "all" in rows:
            n = rows["all"]["stranger_false_accepts_visible_faces"]
            print(
                f"{scene}, --face all, false accepts between strangers counting only faces >= "
                f"{100 * MIN_VISIBLE:.0f} % in the frame: {n}"
            )
    for scene, rows in r["scenes"].items():
        delta = 100 * (rows["auto"]["frr"] - pa["frr"]) if "auto" in rows else float("nan")
        print(f"{scene}: FRR with --face auto minus pre-aligned FRR = {delta:+.2f} pp (acceptance: <= 0.10)")


if __name__ == "__main__":
    main()
