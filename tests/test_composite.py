"""Paste-back (echomimic_lib.frames.composite), crop geometry (echomimic_lib.frames.crop) and colour matching on the shared
portrait: an identity "generation" (the crop itself) comes back at > 40 dB, pixels outside the mask are the
original's bit for bit, non-square and odd originals, colour matching only inside the mask."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from echomimic_lib.frames.color_match import match_colors
from echomimic_lib.frames.composite import PasteBack, feather_box, paste_back, region_mask
from echomimic_lib.frames.crop import CropGeometry
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import HalfBodyCrop, crop_image, fit_image, resize_and_pad_params


@pytest.fixture(scope="module")
def portrait(shared_data):
    return cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)


def psnr(a, b) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / err)) if err else float("inf")


def v1_identity(img, square, size=512):
    """What a perfect model returns for a V1 crop: the crop itself (cut and resized like the V1 face crop)."""
    x0, y0, x1, y1 = square
    return cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)


# squares of the V1 face crop of portrait_a at these sizes (v1_face_mask_and_crop on the MediaPipe box)
CASES = {"1342x1342": ((1342, 1342), (71, 106, 1307, 1342)), "720x1280": ((720, 1280), (0, 371, 720, 1091)),
         "641x479 (odd)": ((641, 479), (103, 27, 555, 479)), "333x517 (odd)": ((333, 517), (20, 150, 300, 430))}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_identity_generation_restores_the_original(portrait, case):
    size, square = CASES[case]
    img = portrait if size == portrait.shape[1::-1] else cv2.resize(portrait, size, interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = square
    face = (x0 + (x1 - x0) // 5, y0 + (y1 - y0) // 6, x1 - (x1 - x0) // 5, y1 - (y1 - y0) // 8)
    geom = CropGeometry(size, square, (512, 512), kind="v1_face", face_box=face)
    for region in ("face", "crop"):
        out = paste_back(v1_identity(img, square), img, geom, region=region, feather=16)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert psnr(out, img) > 40.0
        assert psnr(out[y0:y1, x0:x1], img[y0:y1, x0:x1]) > 40.0  # inside the crop itself, not only thanks to the rest


@pytest.mark.parametrize("size", [(720, 1280), (641, 479)], ids=["720x1280", "641x479"])
def test_outside_the_mask_the_original_is_kept_bit_for_bit(portrait, size):
    img = cv2.resize(portrait, size, interpolation=cv2.INTER_AREA)
    w, h = size
    side = min(w, h) * 2 // 3
    square = (w - side - 7, h // 5, w - 7, h // 5 + side)
    geom = CropGeometry(size, square, (64, 64), kind="v1_face", face_box=(square[0] + 20, square[1] + 20, square[2] - 30, square[3] - 9))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    paster = PasteBack(geom, "face", feather=12, dilation=0.05)
    out = paster.frame(noise, img)
    wts = paster.full_weights()
    assert (out[wts == 0] == img[wts == 0]).all()
    assert (wts == 0).mean() > 0.5 and (wts == 1).any() and ((wts > 0) & (wts < 1)).any()  # a feathered band
    changed = (out != img).any(axis=-1)
    assert changed[wts == 1].mean() > 0.9  # the generation replaced the inside
    full = cv2.resize(noise, (side, side), interpolation=cv2.INTER_CUBIC)
    inner = wts[square[1]:square[3], square[0]:square[2]] == 1
    assert (out[square[1]:square[3], square[0]:square[2]][inner] == full[inner]).all()  # weight 1 = the generation as is


def test_feathering_fades_at_the_crop_edges_inside_the_picture_but_not_at_its_border():
    geom = CropGeometry((300, 200), (100, 0, 300, 200), (64, 64), kind="v2_halfbody")  # touches top, bottom and right
    wts = feather_box(region_mask(geom, "crop"), geom, 10)
    assert wts[:, 0].max() < 0.05 and wts[100, 50] == 1.0  # the left edge (inside the picture) fades in
    assert (wts[:, -1][10:-10] == 1.0).all() and (wts[0, 20:-20] == 1.0).all()  # border edges stay at full weight
    assert (feather_box(region_mask(geom, "crop"), geom, 0) == 1).all()


def test_halfbody_geometry_maps_the_padded_canvas_back(portrait):
    img = cv2.resize(portrait, (500, 700), interpolation=cv2.INTER_AREA)
    x0, y0, x1, y1 = 60, 80, 460, 560  # a taller-than-wide crop: padded left and right in the square canvas
    crop = HalfBodyCrop(x0, y0, x1, y1, (500, 700), 768, resize_and_pad_params(y1 - y0, x1 - x0, 768))
    generated = fit_image(crop_image(img, crop), (512, 512))  # Reference Preparation's V2 path
    geom = CropGeometry.from_halfbody(crop, (512, 512))
    assert geom.box == (x0, y0, x1, y1) and geom.placement[1] == 0 and geom.placement[3] == 512 and geom.placement[0] > 0
    out = paste_back(generated, img, geom, region="crop", feather=8)
    assert psnr(out[y0:y1, x0:x1], img[y0:y1, x0:x1]) > 33.0  # two resizes, but no shift, no black padding pasted
    assert (out[:y0] == img[:y0]).all() and (out[y1:] == img[y1:]).all()


@pytest.mark.parametrize("method", ["lab", "histogram"])
def test_colour_matching_changes_only_the_masked_region_and_moves_it_to_the_original(portrait, method):
    img = cv2.resize(portrait, (400, 300), interpolation=cv2.INTER_AREA)
    geom = CropGeometry((400, 300), (100, 20, 380, 300), (128, 128), kind="v1_face", face_box=(150, 60, 330, 280))
    tinted = v1_identity(img, geom.box, 128).astype(np.float64)
    tinted[..., 0] = tinted[..., 0] * 0.8 + 45
    tinted[..., 2] *= 0.75  # a colour cast the model might add
    tinted = np.round(tinted).astype(np.uint8)
    plain = PasteBack(geom, "face", feather=10)
    matched = PasteBack(geom, "face", feather=10, color=method)
    a, b = plain.frame(tinted, img), matched.frame(tinted, img)
    wts = plain.full_weights()
    assert (b[wts == 0] == img[wts == 0]).all() and (a[wts == 0] == b[wts == 0]).all()
    inside = wts == 1
    assert (a[inside] != b[inside]).any()
    err_plain = np.abs(a[inside].mean(axis=0) - img[inside].mean(axis=0)).max()
    err_match = np.abs(b[inside].mean(axis=0) - img[inside].mean(axis=0)).max()
    assert err_plain > 20 and err_match < 5


def test_colour_matching_with_too_few_pixels_or_off_is_unchanged():
    x = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert match_colors(x, x[::-1], np.zeros((8, 8), bool), "lab") is x
    assert match_colors(x, x[::-1], np.ones((8, 8), bool), "off") is x
    with pytest.raises(EchoMimicError, match="unknown colour matching 'mkl'"):
        match_colors(x, x, np.ones((8, 8), bool), "mkl")


def test_crop_geometry_round_trips_through_a_plain_dict_and_maps_points():
    geom = CropGeometry((641, 479), (103, 27, 555, 479), (512, 512), kind="v1_face", face_box=(180, 150, 480, 440),
                        face_hull=[(200.5, 160.0), (470.0, 170.0), (330.0, 430.0)])
    d = geom.to_dict()
    assert d["box"] == [103, 27, 555, 479] and d["source_size"] == [641, 479]
    back = CropGeometry.from_dict(__import__("json").loads(__import__("json").dumps(d)))
    assert back == geom and back.face_hull == geom.face_hull
    pts = np.array([[103.0, 27.0], [555.0, 479.0], [300.0, 200.0]])
    assert np.allclose(geom.to_output(pts)[:2], [[0, 0], [512, 512]])
    assert np.allclose(geom.to_source(geom.to_output(pts)), pts)


def test_bad_geometry_and_inputs_are_explained():
    with pytest.raises(EchoMimicError, match="box .* lies outside the 100x100 original"):
        CropGeometry((100, 100), (50, 50, 150, 150), (64, 64))
    with pytest.raises(EchoMimicError, match="missing box"):
        CropGeometry.from_dict({"source_size": [10, 10], "output_size": [8, 8]})
    with pytest.raises(EchoMimicError, match="unknown keys"):
        CropGeometry.from_dict({"source_size": [10, 10], "box": [0, 0, 10, 10], "output_size": [8, 8], "zoom": 2})
    geom = CropGeometry.whole((100, 80), (64, 64))
    with pytest.raises(EchoMimicError, match="generated frames are 32x32 but the crop was made for 64x64"):
        PasteBack(geom, "crop").frame(np.zeros((32, 32, 3), np.uint8), np.zeros((80, 100, 3), np.uint8))
    with pytest.raises(EchoMimicError, match="original picture is 90x80 but the crop was made from a 100x80"):
        PasteBack(geom, "crop").frame(np.zeros((64, 64, 3), np.uint8), np.zeros((80, 90, 3), np.uint8))
    with pytest.raises(EchoMimicError, match="region 'hull' needs face landmarks"):
        region_mask(geom, "hull")
