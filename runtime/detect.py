"""Face detection and five landmarks with YuNet, run by ONNX Runtime.

YuNet is small (tens of kB of weights) and returns the same five landmarks the ArcFace template uses, in
the same order. It runs in ONNX Runtime, which the runtime already needs for artifacts, rather than
OpenCV's `cv2.FaceDetectorYN`: one pass on a 384 px refinement crop takes 2.0 ms against OpenCV's 5.8 ms
(one thread, x86; `python benchmarks/detect_speed.py`), and one session serves every thread at once. The
decoding of YuNet's outputs (anchor-free, strides 8/16/32) is written here. The model file is never
downloaded: it is the one in the artifact's pack (edgeface.runtime.pack), or a path the user gives, or
the repository's shared models folder.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeface.errors import EdgefaceError

DEFAULT_YUNET = (
    Path(__file__).resolve().parents[1].parent / "shared" / "models" / "face_detection_yunet_2026may.onnx"
)
# px: a smaller face has its landmarks re-detected upscaled to each size. One: (224, 288) is more precise but
# costs 2.2x and takes `verify --pairs` below 10x (docs/face_selection.md, benchmarks/refine_heldout.py)
REFINE_FACE_SIZES = (256,)
REFINE_CONTEXT = 1.5  # crop side / box side around a face being refined
MAX_SIDE = 640  # px: larger photos are detected downscaled (refine then works at full resolution)
MIN_SIDE = 64  # px: narrower inputs are padded (OpenCV's YuNet returned uninitialised rows at <= 32 px)
STRIDES = (8, 16, 32)  # YuNet's three anchor grids, one anchor per cell
MIRROR = [1, 0, 2, 4, 3]  # landmark order after a horizontal flip: eyes and mouth corners swap
YUNET_ENV = "EDGEFACE_YUNET"  # lets an installed package (no ../shared) find the detector


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x, y, w, h in image pixels
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose tip, left and right mouth corner
    score: float
    detected_size: float = 0.0  # face size (px) in the detector's input; < box size when downscaled

    @property
    def area(self) -> float:
        return max(self.box[2], 0.0) * max(self.box[3], 0.0)


def degenerate(face: Face, width: int, height: int) -> str | None:
    """Why `face` cannot be used (None if it can): alignment needs finite, distinct landmarks inside the
    photo; a box of zero area or entirely outside the frame is not a face in this photo."""
    box = np.asarray(face.box, np.float64)
    lm = np.asarray(face.landmarks, np.float64)
    if box.shape != (4,) or lm.shape != (5, 2):
        return "malformed detection"
    if not (np.isfinite(box).all() and np.isfinite(lm).all() and math.isfinite(face.score)):
        return "non-finite box, landmarks or score"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return "zero-area box"
    if x + w <= 0 or y + h <= 0 or x >= width or y >= height:
        return "box outside the frame"
    cx, cy = lm.mean(0)
    if not (0 <= cx < width and 0 <= cy < height):
        return "landmarks outside the frame"
    if float(np.ptp(lm, axis=0).max()) < 1.0:
        return "landmarks collapsed to one point"
    return None


def usable(faces: list[Face], width: int, height: int) -> tuple[list[Face], list[str]]:
    """(the faces that pass `degenerate`, in order; why each of the others was dropped)."""
    kept, rejected = [], []
    for f in faces:
        why = degenerate(f, width, height)
        if why is None:
            kept.append(f)
        else:
            rejected.append(why)
    return kept, rejected


def default_detector_path() -> Path:
    env = os.environ.get(YUNET_ENV)
    return Path(env) if env else DEFAULT_YUNET


class YuNetDetector:
    """`detect(image)` -> faces sorted largest first; the input size is set per image, as YuNet needs."""

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 50,
        max_side: int = MAX_SIDE,
        landmarker: str | os.PathLike[str] | None = None,
        threads: int = 1,
    ) -> None:
        """`landmarker`: a face-mesh model file (runtime.landmarks) that `refine` uses instead of YuNet
        re-detection; default $EDGEFACE_LANDMARKER, else none. `threads`: ONNX Runtime's intra-op threads
        for one detection (`--threads` of a single photo or a video; batches run one per worker)."""
        from edgeface.runtime.landmarks import MeshLandmarker, default_landmarker_path

        mesh = Path(landmarker) if landmarker else default_landmarker_path()
        self.landmarker = MeshLandmarker(mesh) if mesh else None
        path = Path(model_path) if model_path else default_detector_path()
        if not path.is_file():
            raise EdgefaceError(
                f"face detector model not found: {path} (use a pack, which holds its detector, or pass "
                f"--detector PATH or set {YUNET_ENV}; nothing is downloaded)"
            )
        self._session = _yunet_session(path, threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._fixed = _fixed_size(self._session, path)
        self.path = path
        self.max_side = max_side
        self.score_threshold, self.nms_threshold, self.top_k = score_threshold, nms_threshold, top_k

    def clone(self) -> YuNetDetector:
        """A detector for another thread. The ONNX Runtime session is shared (its `run` is thread-safe);
        the face-mesh interpreter is not, so each clone loads its own."""
        twin = copy.copy(self)
        if self.landmarker is not None:
            twin.landmarker = type(self.landmarker)(self.landmarker.path)
        return twin

    def detect(self, image_bgr: np.ndarray, rejected: list[str] | None = None) -> list[Face]:
        """Usable faces in `image_bgr` coordinates, largest first; why any others were dropped is appended
        to `rejected` when given.

        Photos larger than `max_side` are detected on a downscaled copy: YuNet's cost grows with the pixel
        count (a 12 MP phone photo would take seconds on a Pi) while faces worth recognising stay
        detectable at 640 px; `refine` then recovers landmark precision from the full-resolution image.
        Inputs narrower than `MIN_SIDE` are padded (bottom/right, so coordinates do not move): on them YuNet
        returns rows of uninitialised memory (infinite or 1e27 px boxes with score 1.0, depending on what
        ran before), and every row still goes through `degenerate` before it can be used.
        """
        h, w = image_bgr.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = (
            image_bgr
            if s == 1.0
            else cv2.resize(
                image_bgr,
                (max(1, round(w * s)), max(1, round(h * s))),
                interpolation=cv2.INTER_AREA,
            )
        )
        rows = self._run(small)
        faces = [
            Face(
                box=tuple(float(v) / s for v in r[:4]),  # type: ignore[arg-type]
                landmarks=np.asarray(r[4:14], np.float64).reshape(5, 2) / s,
                score=float(r[14]),
                detected_size=float(max(r[2], r[3])),
            )
            for r in rows
        ]
        kept, why = usable(faces, w, h)
        if rejected is not None:
            rejected.extend(why)
        return sorted(kept, key=lambda f: f.area, reverse=True)

    def _run(self, image_bgr: np.ndarray) -> np.ndarray:
        """YuNet's (N, 15) rows for one image (box x, y, w, h; five landmarks; score), best first, after
        non-maximum suppression. The input is padded (bottom/right, so coordinates do not move) to at
        least MIN_SIDE px and to a multiple of the largest stride, as the network's grids need. A model
        exported with a fixed input size (OpenCV's zoo file of 2023, 640x640) gets the image padded to that
        size, or downscaled to fit it, and the rows scaled back."""
        h, w = image_bgr.shape[:2]
        s = 1.0
        if self._fixed is None:
            ph, pw = (max(MIN_SIDE, -(-side // STRIDES[-1]) * STRIDES[-1]) for side in (h, w))
        else:
            ph, pw = self._fixed
            s = min(1.0, ph / h, pw / w)
            if s < 1.0:
                size = (min(pw, max(1, round(w * s))), min(ph, max(1, round(h * s))))
                image_bgr = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
                h, w = image_bgr.shape[:2]
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :h, :w] = image_bgr.transpose(2, 0, 1)
        out = dict(zip(self._outputs, self._session.run(self._outputs, {self._input: blob}), strict=True))
        for k in STRIDES:  # a file with YuNet's output names but another layout must not be misread
            anchors = (ph // k) * (pw // k)
            for name, width in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
                got = out[f"{name}_{k}"].size
                if got != anchors * width:
                    raise EdgefaceError(
                        f"face detector {self.path}: output {name}_{k} has {got} values for a {pw}x{ph} "
                        f"input, YuNet gives {anchors * width}; not a YuNet model"
                    )
        rows = np.concatenate([_decode(out, k, pw // k, self.score_threshold) for k in STRIDES])
        if not len(rows):
            return rows
        boxes, scores = rows[:, :4].tolist(), rows[:, 14].tolist()
        keep = cv2.dnn.NMSBoxes(boxes, scores, self.score_threshold, self.nms_threshold, top_k=self.top_k)
        rows = rows[np.asarray(keep, np.int64).reshape(-1)]
        rows[:, :14] /= s
        return rows

    def refine(
        self,
        image_bgr: np.ndarray,
        face: Face,
        face_sizes: tuple[int, ...] = REFINE_FACE_SIZES,
        context: float = REFINE_CONTEXT,
    ) -> Face:
        """Re-detect a small face on upscaled crops around it, for more precise landmarks.

        YuNet's landmarks are coarse on small faces: on the 250x250 LFW photos (faces ~100 px) they sit a
        median 0.098 inter-ocular distances from the reference landmarks, 0.073 after this. At each size in
        `face_sizes` the face's crop is re-detected as it is and mirrored (the mirror cancels YuNet's
        left/right-asymmetric errors), and all estimates are averaged. More sizes put the face on more
        phases of YuNet's anchor grids, whose errors differ: (224, 288) gives 0.068 and never more false
        rejects in the measurements of docs/face_selection.md, at 2.2x the cost, so it is a parameter, not
        the default. The crop is `context` x the box so the detector sees some context. Faces the detector
        already saw at the largest size or more are returned unchanged, so close-up camera frames pay
        nothing; a big face found in a downscaled photo is re-detected at full resolution. With a
        face-mesh `landmarker`, that model gives the landmarks instead, at every face size.
        """
        if self.landmarker is not None:
            return self.landmarker.refine(image_bgr, face)
        size = max(face.box[2], face.box[3])
        if size <= 0 or not face_sizes or (face.detected_size or size) >= max(face_sizes):
            return face
        found = [lm for face_size in face_sizes for lm in self._redetect(image_bgr, face, face_size, context)]
        if not found:
            return face
        return Face(face.box, np.mean(found, axis=0), face.score, detected_size=float(max(face_sizes)))

    def _redetect(
        self, image_bgr: np.ndarray, face: Face, face_size: int, context: float
    ) -> list[np.ndarray]:
        """The face's landmarks re-detected on a crop scaled so the face is `face_size` px, and on its
        mirror image (mapped back, left and right swapped): zero, one or two estimates."""
        x, y, w, h = face.box
        size = max(w, h)
        scale = face_size / size  # < 1 for a large face found in a downscaled photo
        side = context * size
        x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
        m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        n = int(round(side * scale))
        crop = cv2.warpAffine(image_bgr, m, (n, n), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        found = [
            [lm / scale + np.array([x0, y0]) for lm in self._landmarks(c)] for c in (crop, cv2.flip(crop, 1))
        ]
        found[1] = [np.c_[2 * x0 + (n - 1) / scale - lm[:, 0], lm[:, 1]][MIRROR] for lm in found[1]]
        # The same face, not a neighbour: the re-detected landmarks must stay within a quarter of the
        # inter-ocular distance of the first ones on average (refinement moves them by ~0.1 IOD).
        iod = float(np.linalg.norm(face.landmarks[0] - face.landmarks[1])) or size / 3
        same = []
        for candidates in found:
            moved = [float(np.linalg.norm(c - face.landmarks, axis=1).mean()) for c in candidates]
            if candidates and min(moved) <= 0.25 * iod:
                same.append(candidates[int(np.argmin(moved))])
        return same

    def _landmarks(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        return [
            np.asarray(r[4:14], np.float64).reshape(5, 2)
            for r in self._run(image_bgr)
            if np.isfinite(r).all()
        ]


def _yunet_session(path: Path, threads: int = 1) -> Any:
    """An ONNX Runtime session for a YuNet file (the anchor-free 2023 layout: cls/obj/bbox/kps per stride
    8, 16, 32, as OpenCV's FaceDetectorYN expects)."""
    import onnxruntime as ort

    if not 1 <= threads <= 1024:
        raise EdgefaceError(f"face detector threads must be in [1, 1024], got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise EdgefaceError(f"cannot load face detector {path}: {str(e).strip().splitlines()[-1]}") from None
    names = {o.name for o in session.get_outputs()}
    missing = sorted({f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in STRIDES} - names)
    inputs = session.get_inputs()
    if missing or len(inputs) != 1 or inputs[0].type != "tensor(float)":
        lacks = f"no output {missing[0]}" if missing else "not one float image input"
        raise EdgefaceError(
            f"cannot load face detector {path}: not a YuNet model ({lacks}); pass a YuNet .onnx of "
            "OpenCV's model zoo, 2023 or later"
        )
    return session


def _fixed_size(session: Any, path: Path) -> tuple[int, int] | None:
    """(height, width) of a YuNet exported with a fixed input size, None for a dynamic one."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return None
    h, w = int(shape[2]), int(shape[3])
    if h % STRIDES[-1] or w % STRIDES[-1]:
        raise EdgefaceError(
            f"cannot use face detector {path}: its input is {h}x{w} px, and YuNet's grids need a multiple "
            f"of {STRIDES[-1]} px per side"
        )
    return h, w


def _decode(out: dict[str, np.ndarray], stride: int, cols: int, score_threshold: float) -> np.ndarray:
    """The (N, 15) candidate rows of one stride's grid that score above `score_threshold`: each anchor
    (row r, column c) predicts a box centre offset in cells, log width/height in cells, five landmark
    offsets in cells, and a class and an objectness probability whose geometric mean is the score."""
    cls = np.clip(out[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
    obj = np.clip(out[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
    score = np.sqrt(cls * obj)
    idx = np.flatnonzero(score > score_threshold)
    r, c = np.divmod(idx, cols)
    cell = np.stack([c, r], axis=1).astype(np.float32)
    bbox = out[f"bbox_{stride}"].reshape(-1, 4)[idx]
    kps = out[f"kps_{stride}"].reshape(-1, 5, 2)[idx]
    with np.errstate(over="ignore"):  # an absurd log-size is an infinite box; `degenerate` drops it
        size = np.exp(bbox[:, 2:]) * stride
    centre = (cell + bbox[:, :2]) * stride
    landmarks = (cell[:, None, :] + kps) * stride
    return np.concatenate(
        [centre - size / 2, size, landmarks.reshape(-1, 10), score[idx, None]], axis=1
    ).astype(np.float32)
