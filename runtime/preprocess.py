"""Image decoding and spec-driven normalisation, written once.

Evaluation, the exporters' parity checks, calibration and the on-device pipeline all call these functions,
so what is measured is what ships. numpy + OpenCV only (no torch).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from edgeface.runtime.align import crop_aligned

from edgeface.errors import EdgefaceError
from edgeface.io import os_errors, printable
from edgeface.spec import GRAY, ModelSpec, TensorQuant

# 2**27 pixels (e.g. 11585 x 11585, or a 108 MP phone photo) decode to 384 MB of BGR: what a 1 GB Pi can
# afford. OpenCV's own limit is 2**30 pixels (3 GB), too late and too large to protect a device.
MAX_IMAGE_PIXELS = 2**27
MAX_IMAGE_BYTES = 1 << 30


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to BGR uint8 (H, W, 3); a clear error for missing, unreadable or corrupt files.

    The dimensions are read from the file's header (`image_header`) before OpenCV decodes anything, so a
    decompression bomb (a small PNG that claims 50000 x 50000 pixels) is refused without allocating it,
    and only formats whose header we can check reach the decoder."""
    path = Path(path)
    shown = printable(path)
    with os_errors("read image", path):
        if not path.exists():
            raise EdgefaceError(f"image not found: {shown}")
        if not path.is_file():
            raise EdgefaceError(f"not an image file: {shown}")
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise EdgefaceError(f"image file too large: {shown} is {size / 2**20:.0f} MB (limit 1024 MB)")
        data = path.read_bytes()
    if not data:
        raise EdgefaceError(f"cannot decode image (empty file): {shown}")
    header = image_header(data)
    if header is None:
        raise EdgefaceError(
            f"cannot decode image (corrupt, or not a JPEG, PNG, BMP, WebP, TIFF, GIF, PNM or other image "
            f"format edgeface checks): {shown}"
        )
    fmt, width, height = header
    if width < 1 or height < 1:
        raise EdgefaceError(f"cannot decode image (its {fmt} header says {width}x{height} pixels): {shown}")
    if width * height > MAX_IMAGE_PIXELS:
        raise EdgefaceError(
            f"image too large: {shown} is {width}x{height} ({width * height / 1e6:.0f} megapixels; the "
            f"limit is {MAX_IMAGE_PIXELS / 1e6:.0f}); downscale it first"
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise EdgefaceError(f"cannot decode image ({_cv_reason(e)}): {shown}") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise EdgefaceError(f"cannot decode image (corrupt or not an image): {shown}")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:  # a header that understated the size
        raise EdgefaceError(f"image too large: {shown} decodes to {image.shape[1]}x{image.shape[0]}")
    return image


def _cv_reason(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if "error:" in ln]
    return (lines[-1].split("error:", 1)[1].strip() if lines else "OpenCV refused it")[:160]


def image_header(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) from an encoded image's header without decoding it; None when the format is
    not one OpenCV decodes that we can check, or the header is truncated or malformed."""
    try:
        for magic, probe in _PROBES:
            if data.startswith(magic) if isinstance(magic, bytes) else magic(data):
                return probe(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _u16be(b: bytes, i: int) -> int:
    return int(struct.unpack_from(">H", b, i)[0])


def _u32be(b: bytes, i: int) -> int:
    return int(struct.unpack_from(">I", b, i)[0])


def _png(b: bytes) -> tuple[str, int, int]:
    if b[12:16] != b"IHDR":
        raise ValueError("no IHDR")
    return "PNG", _u32be(b, 16), _u32be(b, 20)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(b: bytes) -> tuple[str, int, int]:
    i = 2
    while True:
        if b[i] != 0xFF:
            raise ValueError("not a marker")
        while b[i] == 0xFF:  # fill bytes
            i += 1
        marker = b[i]
        i += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if marker == 0xD9:
            raise ValueError("no frame header before end of image")
        length = _u16be(b, i)
        if marker in _JPEG_SOF:
            return "JPEG", _u16be(b, i + 5), _u16be(b, i + 3)
        if length < 2:
            raise ValueError("bad segment length")
        i += length


def _gif(b: bytes) -> tuple[str, int, int]:
    w, h = struct.unpack_from("<HH", b, 6)
    return "GIF", int(w), int(h)


def _bmp(b: bytes) -> tuple[str, int, int]:
    if _u32le(b, 14) == 12:  # OS/2 BITMAPCOREHEADER
        w, h = struct.unpack_from("<HH", b, 18)
    else:
        w, h = struct.unpack_from("<ii", b, 18)  # height < 0: top-down rows
    return "BMP", abs(int(w)), abs(int(h))


def _u32le(b: bytes, i: int) -> int:
    return int(struct.unpack_from("<I", b, i)[0])


def _webp(b: bytes) -> tuple[str, int, int]:
    chunk = b[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", b, 26)
        return "WebP", int(w) & 0x3FFF, int(h) & 0x3FFF
    if chunk == b"VP8L":
        bits = _u32le(b, 21)
        return "WebP", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        w = int.from_bytes(b[24:27], "little") + 1
        h = int.from_bytes(b[27:30], "little") + 1
        return "WebP", w, h
    raise ValueError("unknown WebP chunk")


def _tiff(b: bytes) -> tuple[str, int, int]:
    e = "<" if b[:2] == b"II" else ">"
    ifd = int(struct.unpack_from(e + "I", b, 4)[0])
    (n,) = struct.unpack_from(e + "H", b, ifd)
    dims: dict[int, int] = {}
    for k in range(int(n)):
        tag, typ, _count = struct.unpack_from(e + "HHI", b, ifd + 2 + 12 * k)
        if tag in (256, 257):
            fmt = {3: "H", 4: "I", 16: "Q"}.get(int(typ))
            if fmt is None:
                raise ValueError("bad dimension type")
            dims[int(tag)] = int(struct.unpack_from(e + fmt, b, ifd + 2 + 12 * k + 8)[0])
    return "TIFF", dims[256], dims[257]


_PNM_TOKENS = re.compile(rb"(?:\s|#[^\n]*\n)*(\S+)")


def _pnm(b: bytes) -> tuple[str, int, int]:
    head = b[:4096]
    if head[:2] == b"P7":  # PAM: WIDTH / HEIGHT lines
        w = re.search(rb"\nWIDTH\s+(\d+)", head)
        h = re.search(rb"\nHEIGHT\s+(\d+)", head)
        if not w or not h:
            raise ValueError("PAM without WIDTH/HEIGHT")
        return "PAM", int(w.group(1)), int(h.group(1))
    tokens = _PNM_TOKENS.findall(head, 2)[:2]
    if len(tokens) != 2 or not all(t.isdigit() for t in tokens):
        raise ValueError("bad PNM header")
    return "PNM", int(tokens[0]), int(tokens[1])


def _pnm_magic(b: bytes) -> bool:
    return len(b) > 2 and b[0:1] == b"P" and b[1:2] in b"1234567fF" and b[2:3] in b" \t\r\n"


def _sun_raster(b: bytes) -> tuple[str, int, int]:
    return "Sun raster", _u32be(b, 4), _u32be(b, 8)


def _radiance(b: bytes) -> tuple[str, int, int]:
    m = re.search(rb"\n\n([-+])Y (\d+) ([-+])X (\d+)", b[:65536])
    if not m:
        raise ValueError("no resolution line")
    return "Radiance HDR", int(m.group(4)), int(m.group(2))


def _isobmff(b: bytes) -> tuple[str, int, int]:
    """AVIF/HEIF: the largest 'ispe' (image spatial extents) box; OpenCV decodes the primary image."""
    sizes = [(_u32be(b, i + 8), _u32be(b, i + 12)) for i in _find_all(b[: 1 << 20], b"ispe")]
    if not sizes:
        raise ValueError("no ispe box")
    return "AVIF", max(w for w, _ in sizes), max(h for _, h in sizes)


def _find_all(b: bytes, needle: bytes) -> list[int]:
    out, i = [], b.find(needle)
    while i >= 0:
        out.append(i)
        i = b.find(needle, i + 1)
    return out


def _jp2(b: bytes) -> tuple[str, int, int]:
    i = b.find(b"ihdr", 0, 1 << 16)
    if i < 0:
        raise ValueError("no ihdr box")
    return "JPEG 2000", _u32be(b, i + 8), _u32be(b, i + 4)


def _j2k(b: bytes) -> tuple[str, int, int]:
    # SIZ marker right after SOC: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
    if b[2:4] != b"\xff\x51":
        raise ValueError("no SIZ marker")
    x, y, xo, yo = struct.unpack_from(">IIII", b, 8)
    return "JPEG 2000", int(x - xo), int(y - yo)


_PROBES: list[tuple[bytes | Callable[[bytes], bool], Callable[[bytes], tuple[str, int, int]]]] = [
    (b"\x89PNG\r\n\x1a\n", _png),
    (b"\xff\xd8", _jpeg),
    (b"GIF87a", _gif),
    (b"GIF89a", _gif),
    (b"BM", _bmp),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", _webp),
    (b"II*\x00", _tiff),
    (b"MM\x00*", _tiff),
    (_pnm_magic, _pnm),
    (b"\x59\xa6\x6a\x95", _sun_raster),
    (b"#?RADIANCE", _radiance),
    (b"#?RGBE", _radiance),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"avif", b"avis", b"mif1", b"heic", b"heix"), _isobmff),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", _jp2),
    (b"\xff\x4f\xff\x51", _j2k),
]


# BT.601 luma in 14-bit fixed point (the weights sum to 2**14): exact integers, so the Kotlin demo and any
# other reader reproduce every grey level bit for bit; the float formula would differ by one level on ties.
LUMA_BGR = (1868, 9617, 4899)  # B, G, R: 0.114, 0.587, 0.299 times 2**14
LUMA_SHIFT = 14


def luma(face_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 (H, W, 3) -> grey uint8 (H, W, 1): Y = (1868 B + 9617 G + 4899 R + 8192) >> 14, the
    standard BT.601 luma (0.114, 0.587, 0.299) rounded to the nearest level, as a GRAY spec defines it."""
    b, g, r = (face_bgr[..., k].astype(np.uint32) for k in range(3))
    y = (LUMA_BGR[0] * b + LUMA_BGR[1] * g + LUMA_BGR[2] * r + (1 << (LUMA_SHIFT - 1))) >> LUMA_SHIFT
    return y.astype(np.uint8)[..., None]


def arrange(faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, flip: bool = False) -> np.ndarray:
    """Aligned BGR uint8 faces -> uint8 (N, H, W, C) at the spec's size and channel order, mirrored if asked.

    Faces that are not `spec.input_size` are cut and resized by `align.crop_aligned` (the spec's face
    crop, aspect ratio kept), which is right for already-aligned crops; raw photos go through alignment.
    C is 3 (RGB/BGR) or 1 (GRAY, the luma of the colour face).
    """
    batch = []
    for face in faces_bgr if isinstance(faces_bgr, Sequence) else list(faces_bgr):
        if face.ndim != 3 or face.shape[2] != 3:
            raise EdgefaceError(f"expected a colour image (H, W, 3), got shape {face.shape}")
        face = crop_aligned(face, spec)
        # OpenCV's SIMD copies, not numpy's strided ones: this runs before every inference on the device
        if flip:
            face = cv2.flip(face, 1)
        if spec.channel_order == "RGB":
            face = cv2.cvtColor(face, cv2.COLOR_BGR2RGB)
        elif spec.channel_order == GRAY:
            face = luma(face)
        batch.append(np.ascontiguousarray(face, dtype=np.uint8))
    return batch[0][None] if len(batch) == 1 else np.stack(batch)  # N, H, W, C


def input_table(spec: ModelSpec, quant: TensorQuant | None = None) -> np.ndarray:
    """(256, 1, C) lookup table: pixel value -> network input, per channel (in the spec's channel order).

    Pixels are 8-bit, so the spec's scaling (x / 255 - mean) / std, and for a quantized input the
    quantization after it, is a per-channel function of 256 values: a table computed once replaces float
    arithmetic over every pixel (cv2.LUT applies it), and the table is the one place mean and std are used.
    """
    c = spec.channels
    ramp = np.repeat(np.arange(256, dtype=np.float32)[:, None], c, axis=1)
    table = (ramp / 255.0 - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if quant is not None:
        table = quant.quantize(table)
    return np.ascontiguousarray(table.reshape(256, 1, c))


def apply_table(
    faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, table: np.ndarray, flip: bool = False
) -> np.ndarray:
    """Aligned BGR uint8 faces -> network input (the table's dtype) in the spec's layout."""
    x = arrange(faces_bgr, spec, flip)
    n, h, w, c = x.shape
    y = cv2.LUT(x.reshape(n * h, w, c), table).reshape(n, h, w, c)
    if spec.layout == "NHWC":
        return y
    # one channel: a reshape, whose strides are plain NCHW ones; a transposed (N, H, W, 1) array has the
    # strides of channels_last, which torch propagates and `x.view(x.size(0), -1)` then refuses
    return y.reshape(n, c, h, w) if c == 1 else np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def normalize(
    faces_bgr: np.ndarray | Sequence[np.ndarray], spec: ModelSpec, flip: bool = False
) -> np.ndarray:
    """Aligned BGR uint8 faces -> float32 network input in the spec's layout, channel order and scaling."""
    return apply_table(faces_bgr, spec, input_table(spec), flip)


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    e = np.asarray(embeddings, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), eps)
