"""A PNG reference is decoded once (the alpha warning and the pixels from the same decode), with the pixels and the
warning as before."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from echomimic_lib.io import image_file
from echomimic_lib.io.image_file import read_image_file

SHARED = Path("/work/shared/data/images")


def _expected(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _count_decodes(monkeypatch) -> list:
    calls: list = []
    imread, imdecode = cv2.imread, cv2.imdecode

    def counted_imread(*a, **k):
        calls.append("imread")
        return imread(*a, **k)

    def counted_imdecode(*a, **k):
        calls.append("imdecode")
        return imdecode(*a, **k)

    monkeypatch.setattr(cv2, "imread", counted_imread)
    monkeypatch.setattr(cv2, "imdecode", counted_imdecode)
    return calls


def _pngs(tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    opaque = a.copy()
    opaque[..., 3] = 255
    out = {}

    def save(name, img, **kw):
        out[name] = tmp / f"{name}.png"
        img.save(out[name], **kw)

    save("rgba", Image.fromarray(a, "RGBA"))
    save("rgba_opaque", Image.fromarray(opaque, "RGBA"))
    save("rgb", Image.fromarray(a[..., :3], "RGB"))
    save("grey", Image.fromarray(a[..., 0], "L"))
    save("grey_alpha", Image.fromarray(a[..., :2], "LA"))
    save("palette", Image.fromarray(a[..., :3]).convert("P"))
    save("palette_trns", Image.fromarray(a[..., :3]).convert("P"), transparency=3)
    save("grey_trns", Image.fromarray(a[..., 0], "L"), transparency=7)
    save("one_bit", Image.fromarray(a[..., 0] > 128))
    a16 = rng.integers(0, 65536, (37, 53, 4), dtype=np.uint16)
    for name, img in (("bgra16", a16), ("bgr16", a16[..., :3]), ("grey16", a16[..., 0])):
        out[name] = tmp / f"{name}.png"
        cv2.imwrite(str(out[name]), img)
    return out


def test_png_is_decoded_once_with_the_same_pixels_and_warning(tmp_path, monkeypatch, caplog):
    files = _pngs(tmp_path)
    files.update({p.stem: p for p in SHARED.glob("*.png")})
    expected = {name: _expected(p) for name, p in files.items()}
    full = {name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for name, p in files.items()}
    calls = _count_decodes(monkeypatch)
    for name, path in files.items():
        calls.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=image_file.__name__):
            got = read_image_file(path)
        assert calls == ["imread"], (name, calls)
        assert got.dtype == np.uint8 and got.shape == expected[name].shape, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
        u = full[name]
        transparent = u.ndim == 3 and u.shape[2] == 4 and (u[..., 3] < np.iinfo(u.dtype).max).any()
        warned = [r.getMessage() for r in caplog.records if "transparent background" in r.getMessage()]
        assert len(warned) == int(transparent), (name, warned)
    assert any("transparent" in n or n.endswith("alpha") or n == "rgba" for n in files)


def test_transparent_share_is_stated_as_before(tmp_path, caplog):
    a = np.full((10, 10, 4), 200, np.uint8)
    a[..., 3] = 255
    a[:3, :, 3] = 0  # 30 % clear
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger=image_file.__name__):
        got = read_image_file(tmp_path / "a.png", "--ref")
    assert (got == 200).all()
    assert any("--ref" in r.getMessage() and "(30% of the pixels)" in r.getMessage() for r in caplog.records)


def test_png_with_an_exif_orientation_is_still_turned(tmp_path, monkeypatch):
    a = np.zeros((20, 40, 4), np.uint8)
    a[:5, :10] = 255
    a[..., 3] = 200
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(a, "RGBA").save(tmp_path / "turned.png", exif=exif.tobytes())
    expected = _expected(tmp_path / "turned.png")
    assert expected.shape[:2] == (40, 20)  # OpenCV applies it
    np.testing.assert_array_equal(read_image_file(tmp_path / "turned.png"), expected)


def test_jpeg_read_as_before(monkeypatch):
    path = SHARED / "pose_demo_d.jpg"
    expected = _expected(path)
    calls = _count_decodes(monkeypatch)
    np.testing.assert_array_equal(read_image_file(path), expected)
    assert calls == ["imread"]


def test_unreadable_png_still_named(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(Exception, match="cannot be read as an image"):
        read_image_file(bad)
