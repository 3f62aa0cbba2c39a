"""Videos built from real LFW photos with their ground truth known by construction (tests and benchmarks).

A "head" is the central 160x160 region of a 250x250 raw_sample photo (the face with some hair and
collar), pasted through a feathered ellipse onto a textured background at a position and size that change
per frame. Whoever is pasted where is the ground truth; nothing is detected to make it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw" / "raw_sample"


def raw(name: str, i: int) -> Path:
    return RAW / name / f"{name}_{i:04d}.jpg"


@functools.cache
def head(name: str, i: int) -> np.ndarray:
    img = cv2.imread(str(raw(name, i)))
    if img is None:
        raise FileNotFoundError(raw(name, i))
    return img[45:205, 45:205].copy()


@functools.cache
def _mask(side: int) -> np.ndarray:
    m = np.zeros((side, side), np.float32)
    cv2.ellipse(m, (side // 2, side // 2), (int(side * 0.42), int(side * 0.48)), 0, 0, 360, 1.0, -1)
    m = cv2.GaussianBlur(m, (0, 0), side * 0.04)
    return m[..., None]


@functools.cache
def background(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A colour gradient with low-frequency texture: structure for the cut detector, no faces."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h, 140 - 50 * xx / w], axis=-1)
    noise = cv2.resize(rng.normal(0, 25, (h // 16, w // 16, 3)).astype(np.float32), (w, h))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@dataclass
class Person:
    """`name`'s photo `photo` on screen for `frames`; its top-left corner and side (px) per frame."""

    name: str
    photo: int
    frames: range
    place: Callable[[int], tuple[float, float, float]]  # frame -> (x, y, side)
    blur: range = field(default_factory=lambda: range(0))  # frames where this head is out of focus

    def rect(self, f: int) -> tuple[float, float, float, float]:
        x, y, s = self.place(f)
        return x, y, s, s


@dataclass
class Scene:
    people: list[Person]
    frames: int
    size: tuple[int, int] = (320, 240)  # w, h
    fps: float = 10.0
    dark: range = field(default_factory=lambda: range(0))  # frames at 15 % exposure
    background_seed: int = 0

    def frame(self, f: int) -> np.ndarray:
        w, h = self.size
        out = background(self.size, self.background_seed).astype(np.float32)
        for p in self.people:
            if f not in p.frames:
                continue
            x, y, s = (int(round(v)) for v in p.place(f))
            patch = cv2.resize(head(p.name, p.photo), (s, s), interpolation=cv2.INTER_AREA)
            if f in p.blur:
                patch = cv2.GaussianBlur(patch, (0, 0), 3.0)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + s, w), min(y + s, h)
            if x1 <= x0 or y1 <= y0:
                continue
            m = _mask(s)[y0 - y : y1 - y, x0 - x : x1 - x]
            region = out[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = region * (1 - m) + patch[y0 - y : y1 - y, x0 - x : x1 - x] * m
        if f in self.dark:
            out *= 0.15
        return np.clip(out, 0, 255).astype(np.uint8)

    def truth(self, f: int) -> list[tuple[str, tuple[float, float, float, float]]]:
        return [(p.name, p.rect(f)) for p in self.people if f in p.frames]

    def write(self, path: Path, fourcc: str = "MJPG", frames: int | None = None) -> Path:
        """Write the scene (`frames` > its length loops it) with OpenCV's VideoWriter."""
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), self.fps, self.size)
        if not w.isOpened():
            raise RuntimeError(f"cannot write {path} with {fourcc}")
        for f in range(frames or self.frames):
            w.write(self.frame(f % self.frames))
        w.release()
        return path


def _overlap(box: tuple[float, ...], rect: tuple[float, ...]) -> float:
    """Fraction of `box` inside `rect`."""
    bx, by, bw, bh = box
    rx, ry, rw, rh = rect
    ix = max(0.0, min(bx + bw, rx + rw) - max(bx, rx))
    iy = max(0.0, min(by + bh, ry + rh) - max(by, ry))
    return ix * iy / max(bw * bh, 1e-9)


def who(scene: Scene, f: int, box: tuple[float, ...]) -> str | None:
    """The person whose pasted head holds most of `box` in frame `f` (None: nobody)."""
    best = max(((_overlap(box, r), n) for n, r in scene.truth(f)), default=(0.0, None))
    return best[1] if best[0] >= 0.5 else None
