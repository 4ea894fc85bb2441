"""A reference image file -> RGB uint8, or an error that says what the file is and how to convert it.

OpenCV decodes it as before (EXIF orientation applied, 16-bit scaled to 8 bits, grayscale and palette images made
RGB, an alpha channel dropped, the first frame of a GIF or an animated WebP). What it cannot read is named from the
file's first bytes: an empty file, a HEIC/HEIF photo (the iPhone camera's format) or an AVIF image (OpenCV's wheels
read neither), a video, a text or HTML file (a web page saved under the picture's name). A transparent background
and an animation are read as above, with a warning. A path OpenCV cannot open (non-ASCII names on Windows) is decoded
from the file's bytes. Refused before decoding: an image whose header declares more than :data:`MAX_PIXELS` (a
decompression bomb, or a 20000 x 20000 scan: about a gigabyte to decode); after it, a JPEG that ends before its image
data does (a truncated download or copy, which OpenCV would fill with grey).
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
    """(width, height) from the image's header (Pillow reads no pixel), else None (no Pillow, or Pillow cannot tell)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError:  # over Pillow's limit: its size read again with the check off, for the message
        pass
    except Exception:
        return None
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # (only for a file already known to be too large)
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


MAX_PIXELS = 2 * 89_478_485  # Pillow's decompression-bomb refusal (ComfyUI's Load Image stops there too): ~179 MP


def _too_large(path: Path, flag: str, size, limit: int) -> EchoMimicError:
    w, h = size
    return EchoMimicError(f"{flag} {path}: {w}x{h} px ({w * h / 1e6:.0f} megapixels) is more than a reference image is "
                          f"read at ({limit / 1e6:.0f} megapixels; decoding it would take {w * h * 3 / 1e9:.1f} GB); scale "
                          "it down (the networks see 512-768 px; 2048 px on the long side is plenty) and pass that file.")


def _text_kind(head: bytes) -> str | None:
    """'an HTML page', 'an SVG drawing' or 'a text file' for a file that starts as text, else None."""
    for cut in range(4):  # the first bytes may end inside a character
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if not text or "\0" in text:
        return None
    low = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in low:
        return "an SVG drawing (vector graphics)"
    return "an HTML page" if low.startswith(("<!doctype html", "<html", "<head", "<?xml")) else "a text file"


def _jpeg_ends(path: Path) -> bool:
    """Whether a JPEG's last bytes are its end-of-image marker (trailing zeros aside)."""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 4096))
        return fh.read().rstrip(b"\0").endswith(b"\xff\xd9")


def _jpeg_truncated(path: Path) -> bool:
    """Whether a JPEG that OpenCV decoded ends before its image data does (OpenCV fills the rest with grey): without
    an end-of-image marker at its end, Pillow decodes it again and says whether the scan data was cut short (a
    camera's trailer after the marker decodes whole and is no truncation)."""
    if _jpeg_ends(path):
        return False
    try:
        from PIL import Image, ImageFile
    except ImportError:
        return False
    keep, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False  # ComfyUI may set it True
    try:
        with Image.open(path) as im:
            im.load()
        return False
    except OSError as exc:
        return "truncated" in str(exc)
    except Exception:
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = keep


_TRUNCATED = ("the file is truncated (it ends before its image data does: an interrupted download or copy); copy or "
              "download it again, or re-export it from the original")


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
    limit = min(MAX_PIXELS, int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30)))
    if size and size[0] * size[1] > limit:
        return _too_large(path, flag, size, limit)
    text = _text_kind(head)
    if text is not None and text.startswith("an SVG"):
        return EchoMimicError(f"{where}: {text}, which OpenCV cannot read; export it as a PNG of 1024 px or more and pass "
                              "that file.")
    if text is not None:
        return EchoMimicError(f"{where}: {text}, not an image (a download that saved the web page, or a renamed file); "
                              "open the picture itself and save it as png or jpg.")
    if head.startswith(b"\xff\xd8") and not _jpeg_ends(path) or head.startswith(b"\x89PNG") and _png_chunks(path)[1]:
        return EchoMimicError(f"{where}: {_TRUNCATED}.")
    return EchoMimicError(f"{where}: cannot be read as an image (unsupported or corrupt file); save it as png or jpg.")


def _png_chunks(path: Path) -> tuple[bool, bool, int]:
    """(whether a PNG holds an ``eXIf`` chunk -- its orientation is applied by IMREAD_COLOR, not by IMREAD_UNCHANGED --,
    whether it is truncated: its chunks run on past the file's end, no ``IEND``, its animation's frame count from an
    APNG's ``acTL`` chunk, else 1); the chunk headers only are read (the pixel data is skipped)."""
    size, exif, frames = path.stat().st_size, False, 1
    with open(path, "rb") as fh:
        fh.seek(8)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return exif, True, frames
            kind, n = head[4:8], int.from_bytes(head[:4], "big")
            if not kind.isalpha():  # no chunk: a damaged file, not a cut one
                return exif, False, frames
            if kind == b"eXIf":
                exif = True
            if kind == b"IEND":
                return exif, fh.tell() + 4 > size, frames
            if kind == b"acTL" and n >= 4:
                frames, n = max(1, int.from_bytes(fh.read(4), "big")), n - 4
            fh.seek(n + 4, os.SEEK_CUR)  # the data and its CRC


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
        from .os_errors import refused

        err = None if isinstance(exc, FileNotFoundError) else refused(exc, p, before=f"{flag}: ")
        if err is None:
            raise
        raise err from exc
    size = _header_size(p) if head else None  # the header only: a decompression bomb is refused before it is decoded
    if size and size[0] * size[1] > MAX_PIXELS:
        raise _too_large(p, flag, size, MAX_PIXELS)
    png = head.startswith(b"\x89PNG\r\n\x1a\n")
    exif, _, frames = _png_chunks(p) if png else (False, True, 1)
    if frames > 1:  # an APNG: OpenCV reads its default image
        log.warning("%s %s is an animation of %d frames; its first frame is the reference.", flag, p, frames)
    if png and not exif:
        full = _decode(p, cv2.IMREAD_UNCHANGED)
        if full is None or full.dtype not in (np.uint8, np.uint16) or full.ndim not in (2, 3):
            raise _unreadable(p, flag)
        if full.ndim == 3 and full.shape[2] == 4:
            _warn_alpha(p, flag, full[:, :, 3])
        return cv2.cvtColor(_bgr_of_unchanged(full), cv2.COLOR_BGR2RGB)
    img = _decode(p, cv2.IMREAD_COLOR)
    if img is None:
        raise _unreadable(p, flag)
    if head.startswith(b"\xff\xd8") and _jpeg_truncated(p):  # OpenCV decoded it, its missing part grey
        raise EchoMimicError(f"{flag} {p}: {_TRUNCATED}.")
    _warn_transparency_or_frames(p, flag, head)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


__all__ = ["read_image_file"]
