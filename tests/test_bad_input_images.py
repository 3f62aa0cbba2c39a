"""Bad images, through `verify` and `enroll`: one error line, exit 2, the gallery untouched.

The dimensions come from the file's header before OpenCV decodes anything (runtime.preprocess.image_header),
so a decompression bomb is refused without allocating its pixels.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from edgeface.runtime.preprocess import MAX_IMAGE_PIXELS, image_header, read_image

from tests.test_bad_input_support import FACE, artifact, assert_one_error, make_gallery, run, snapshot


def _png(width: int, height: int, rows: int = 4) -> bytes:
    """A real PNG stream whose header claims width x height; the IDAT holds only a few zero rows."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * width) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim another size."""
    data = bytearray(FACE.read_bytes())
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def _tiff_claiming(width: int, height: int) -> bytes:
    ok, buf = cv2.imencode(".tiff", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    for k in range(n):
        tag, typ, _ = struct.unpack_from("<HHI", data, ifd + 2 + 12 * k)
        if tag in (256, 257):
            value = width if tag == 256 else height
            struct.pack_into("<HHII", data, ifd + 2 + 12 * k, tag, 4, 1, value)
    return bytes(data)


# id -> (make the file in tmp_path, fragment of the error line)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "png-bomb-50000x50000": (lambda d: _write(d / "bomb.png", _png(50000, 50000)), "image too large"),
    "jpeg-header-60000x60000": (
        lambda d: _write(d / "big.jpg", _jpeg_claiming(60000, 60000)),
        "image too large",
    ),
    "tiff-header-100000x100000": (
        lambda d: _write(d / "big.tiff", _tiff_claiming(100000, 100000)),
        "image too large",
    ),
    "png-zero-width": (lambda d: _write(d / "zero.png", _png(0, 10)), "0x10 pixels"),
    "binary-junk": (lambda d: _write(d / "junk.jpg", bytes(range(256)) * 64), "cannot decode image"),
    "text-named-jpg": (lambda d: _write(d / "notes.jpg", b"hello\n" * 100), "cannot decode image"),
    "empty-file": (lambda d: _write(d / "empty.jpg", b""), "empty file"),
    "truncated-jpeg": (lambda d: _write(d / "cut.jpg", FACE.read_bytes()[:200]), "cannot decode image"),
    "truncated-png-header": (lambda d: _write(d / "cut.png", _png(100, 100)[:20]), "cannot decode image"),
    "folder": (lambda d: _mkdir(d / "photos.jpg"), "not an image file"),
    "fifo": (lambda d: _fifo(d / "pipe.jpg"), "not an image file"),
    "missing": (lambda d: d / "nope.jpg", "image not found"),
    "missing-non-utf8-name": (lambda d: Path(os.fsdecode(bytes(d) + b"/\xff\xfe.jpg")), "image not found"),
}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _fifo(p: Path) -> Path:
    os.mkfifo(p)  # opening it for reading would block: it must be refused before any read
    return p


@pytest.mark.parametrize("case", list(CASES))
def test_bad_image_verify(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = CASES[case]
    bad = make(tmp_path)
    before = snapshot(tmp_path)
    r = run(capsys, "verify", bad, FACE, "--model", artifact())
    assert_one_error(r, fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["png-bomb-50000x50000", "binary-junk", "fifo", "missing-non-utf8-name"])
def test_bad_image_among_good_ones_leaves_the_gallery_unchanged(case: str, capsys, tmp_path: Path) -> None:
    make, fragment = CASES[case]
    gallery = make_gallery(tmp_path / "g.sqlite")
    bad = make(tmp_path)
    before = snapshot(gallery)
    r = run(capsys, "enroll", "--name", "carol", FACE, bad, "--model", artifact(), "--gallery", gallery)
    assert_one_error(r, fragment)
    assert snapshot(gallery) == before


def test_non_utf8_file_name_is_valid_input(capsys, tmp_path: Path) -> None:
    """A photo whose name is not UTF-8 is still a photo: it verifies and enrolls, and every output shows
    the name escaped (the human line, the JSON) rather than crashing the printer or SQLite."""
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jpg"))  # Latin-1 'café'
    odd.write_bytes(FACE.read_bytes())
    r = run(capsys, "verify", odd, FACE, "--model", artifact(), "--json")
    assert r.code == 0, r.err
    assert '"match": true' in r.out and "caf\\\\xe9.jpg" in r.out
    gallery = tmp_path / "g.sqlite"
    r = run(capsys, "enroll", "--name", "Bob Hope", odd, "--model", artifact(), "--gallery", gallery)
    assert r.code == 0, r.err
    import sqlite3

    (source,) = sqlite3.connect(gallery).execute("SELECT source FROM templates").fetchone()
    assert source.endswith("caf\\xe9.jpg")


def test_header_probe_reads_every_format_opencv_writes() -> None:
    """image_header agrees with the decoder on every format cv2 encodes here, so a valid photo in any of
    them is accepted, and the pixel limit is what read_image enforces."""
    img = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    formats = [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm", ".pam", ".hdr", ".ras", ".gif", ".avif"]
    for ext in formats:
        ok, buf = cv2.imencode(ext, img)
        assert ok, ext
        header = image_header(buf.tobytes())
        assert header is not None and header[1:] == (53, 37), (ext, header)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_header(buf.tobytes()) == ("JPEG", 53, 37)
    ok, buf = cv2.imencode(".pgm", img[..., 0])
    assert image_header(buf.tobytes()) == ("PNM", 53, 37)
    assert image_header(b"not an image at all") is None
    side = int(MAX_IMAGE_PIXELS**0.5) + 1
    assert image_header(_png(side, side))[1:] == (side, side)  # type: ignore[index]


def test_real_photos_pass_the_probe() -> None:
    for p in sorted(FACE.parent.parent.rglob("*.jpg"))[:20]:
        h = image_header(p.read_bytes())
        img = read_image(p)
        assert h is not None and h[1:] == (img.shape[1], img.shape[0])
