"""A reference image file -> RGB uint8, or an error that says what the file is and how to convert it.

OpenCV decodes it as before (EXIF orientation applied, 16-bit scaled to 8 bits, grayscale and palette images made
RGB, an alpha channel dropped, the first frame of a GIF or an animated WebP). What it cannot read is named from the
file's first bytes: an empty file, a HEIC/HEIF photo (the iPhone camera's format) or an AVIF image (OpenCV's wheels
read neither), a video, an image above OpenCV's pixel limit. A transparent background and an animation are read
as above, with a warning. A path OpenCV cannot open (non-ASCII names on Windows) is decoded from the file's bytes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError

log = logging.getLogger(__name__)

_HEIF = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"heif", b"mif1", b"msf1"}
_AVIF = {b"avif", b"avis"}
_FIX = "convert it to PNG or JPEG and pass that file"


def _ftyp_kind(head: bytes) -> str | None:
    """'HEIC', 'AVIF' or 'video' for an ISO media file (an ``ftyp`` box first), else None."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    major = head[8:12]
    size = int.from_bytes(head[:4], "big")
    brands = {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
    if major in _AVIF or (major not in _HEIF and brands & _AVIF):
        return "AVIF"
    if major in _HEIF or brands & _HEIF:
        return "HEIC"
    return "video"


def _header_size(path: Path) -> tuple[int, int] | None:
    try:
        from PIL import Image

        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only: no decompression-bomb refusal
        try:
            with Image.open(path) as im:
                return im.size
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    except Exception:  # no Pillow, or Pillow cannot tell either: the generic message
        return None


def _unreadable(path: Path, flag: str) -> EchoMimicError:
    with open(path, "rb") as fh:
        head = fh.read(64)
    where = f"{flag} {path}"
    if not head:
        return EchoMimicError(f"{where}: the file is empty (0 bytes); give the image file itself (png or jpg).")
    kind = _ftyp_kind(head)
    if kind == "HEIC":
        return EchoMimicError(f"{where}: a HEIC/HEIF photo (the iPhone camera's format), which OpenCV cannot read; {_FIX} "
                              "(macOS Preview: File > Export as PNG or JPEG; on the iPhone, Settings > Camera > Formats > "
                              "Most Compatible takes JPEG photos).")
    if kind == "AVIF":
        return EchoMimicError(f"{where}: an AVIF image, which OpenCV cannot read here; {_FIX}.")
    if kind == "video":
        return EchoMimicError(f"{where}: a video, not an image; give one picture of the person (a frame saved as PNG or JPEG).")
    size = _header_size(path)
    limit = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
    if size and size[0] * size[1] > limit:
        return EchoMimicError(f"{where}: {size[0]}x{size[1]} px ({size[0] * size[1] / 1e6:.0f} megapixels) is more than OpenCV "
                              f"reads ({limit / 1e6:.0f} megapixels); scale it down (the networks see 512-768 px; 2048 px on "
                              "the long side is plenty) and pass that file.")
    return EchoMimicError(f"{where}: cannot be read as an image (unsupported or corrupt file); save it as png or jpg.")


def _png_has_exif(path: Path) -> bool:
    """Whether a PNG holds an ``eXIf`` chunk (its orientation is applied by IMREAD_COLOR, not by IMREAD_UNCHANGED);
    the chunk headers only are read (the pixel data is skipped)."""
    with open(path, "rb") as fh:
        fh.seek(8)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return False
            kind = head[4:8]
            if kind == b"eXIf":
                return True
            if kind == b"IEND":
                return False
            fh.seek(int.from_bytes(head[:4], "big") + 4, os.SEEK_CUR)  # the data and its CRC


def _warn_alpha(path: Path, flag: str, alpha: np.ndarray) -> None:
    clear = float((alpha < np.iinfo(alpha.dtype).max).mean()) if alpha.dtype.kind == "u" else 0.0
    if clear > 0:
        log.warning("%s %s has a transparent background (%.0f%% of the pixels); it is animated over the colour stored "
                    "under the transparency (usually black), as ComfyUI's Load Image does. For another background, "
                    "flatten the image onto it first (e.g. white) and pass that file.", flag, path, 100 * clear)


def _warn_transparency_or_frames(path: Path, flag: str, head: bytes) -> None:
    import cv2

    if head.startswith(b"GIF8") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        frames = cv2.imcount(str(path))
        if frames > 1:
            log.warning("%s %s is an animation of %d frames; its first frame is the reference.", flag, path, frames)
    if not (head.startswith(b"\x89PNG") or head[:4] == b"RIFF" or head[:4] in (b"II*\x00", b"MM\x00*")):
        return  # JPEG, BMP, GIF: no partial transparency to speak of
    full = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if full is None or full.ndim != 3 or full.shape[2] != 4:
        return
    _warn_alpha(path, flag, full[:, :, 3])


def _bgr_of_unchanged(full: np.ndarray) -> np.ndarray:
    """The IMREAD_COLOR image of a PNG from its IMREAD_UNCHANGED decode (no EXIF orientation to apply): 16 bits
    scaled to 8 as libpng's strip (the high byte), grey made BGR, the alpha channel dropped."""
    import cv2

    if full.dtype == np.uint16:
        full = (full >> 8).astype(np.uint8)
    if full.ndim == 2 or full.shape[2] == 1:
        return cv2.cvtColor(full, cv2.COLOR_GRAY2BGR)
    if full.shape[2] == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(full[:, :, 0]), cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(full[:, :, :3])


def _decode(p: Path, mode: int):
    import cv2

    try:
        img = cv2.imread(str(p), mode)
        if img is None and not str(p).isascii():  # OpenCV on Windows opens no path outside the ANSI code page (José)
            img = cv2.imdecode(np.fromfile(p, np.uint8), mode)
    except cv2.error:  # OpenCV 5 raises (rather than returning None) for an image above its pixel limit
        img = None
    return img


def read_image_file(path, flag: str = "--reference") -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file that exists; :class:`EchoMimicError` naming what it is otherwise.

    A PNG is decoded once (IMREAD_UNCHANGED: its alpha channel for the warning, its colour as IMREAD_COLOR gives it);
    one with EXIF metadata (an orientation to apply) and other formats are read as before."""
    import cv2

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        from .os_errors import is_os_refusal, os_error_text

        if not is_os_refusal(exc) or isinstance(exc, FileNotFoundError):
            raise
        raise EchoMimicError(f"{flag}: {os_error_text(exc, p, 'read')}") from exc
    if head.startswith(b"\x89PNG\r\n\x1a\n") and not _png_has_exif(p):
        full = _decode(p, cv2.IMREAD_UNCHANGED)
        if full is None or full.dtype not in (np.uint8, np.uint16) or full.ndim not in (2, 3):
            raise _unreadable(p, flag)
        if full.ndim == 3 and full.shape[2] == 4:
            _warn_alpha(p, flag, full[:, :, 3])
        return cv2.cvtColor(_bgr_of_unchanged(full), cv2.COLOR_BGR2RGB)
    img = _decode(p, cv2.IMREAD_COLOR)
    if img is None:
        raise _unreadable(p, flag)
    _warn_transparency_or_frames(p, flag, head)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


__all__ = ["read_image_file"]
