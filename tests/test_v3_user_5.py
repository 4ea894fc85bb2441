"""EchoMimicV3 flash-pro as a user whose downloads can break off (tiny random stand-ins): `echomimic doctor --weights`
names a cut-short official .pth (zip-format torch file) as broken, and still accepts whole files in either torch
format (zip, and the legacy pickle one older tools wrote)."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.test_v3_user_4 import BASE, T5, _official_release


def _state(path, legacy=False):
    torch.manual_seed(0)
    sd = {f"blocks.{i}.weight": torch.randn(64, 64) for i in range(4)}
    torch.save(sd, path, **({"_use_new_zipfile_serialization": False} if legacy else {}))
    return path


@pytest.mark.parametrize("keep", [0.99, 0.6, 0.1], ids=["tail-only", "middle", "head-only"])
def test_a_cut_short_zip_format_pth_is_named_truncated(tmp_path, keep):
    """file_problem read only the first bytes: a .pth cut off anywhere after its 'PK' start passed as whole."""
    from echomimic_lib.jobs.doctor.models import file_problem

    f = _state(tmp_path / "w.pth")
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(int(size * keep))
    why = file_problem(f)
    assert why and "truncated" in why and "broken-off download" in why, why


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_whole_pth_files_of_either_torch_format_are_not_flagged(tmp_path, legacy):
    from echomimic_lib.jobs.doctor.models import file_problem

    for suffix in (".pth", ".pt", ".bin"):
        assert file_problem(_state(tmp_path / f"w{suffix}", legacy=legacy)) is None


def test_doctor_weights_names_a_cut_short_official_umt5_pth(tmp_path):
    """The official umT5 encoder .pth (11 GB; a download that broke off) was listed as ready by doctor --weights and
    only failed deep inside a run's model loading."""
    from transformers import UMT5EncoderModel

    from echomimic_lib.jobs.doctor.models import check_v3
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    folder = write_tiny_v3(tmp_path / "v3-flash")
    hf = folder / "umt5-xxl"
    model = UMT5EncoderModel.from_pretrained(str(hf))
    moved = tmp_path / "hf"
    shutil.move(str(hf), str(moved))
    _official_release(folder, moved, model)
    assert check_v3(tmp_path)["status"] in ("tiny", "ready")
    pth = folder / BASE / T5
    with open(pth, "r+b") as fh:
        fh.truncate(pth.stat().st_size * 2 // 3)
    row = check_v3(tmp_path)
    assert row["status"] == "broken" and row["broken"][0]["path"] == str(pth), row
    assert "truncated" in row["broken"][0]["problem"], row
    assert row["fix"].startswith(f"rm -- {pth}") and "echomimic download --weights v3-flash" in row["fix"], row


# an extreme aspect ratio: a side past the transformer's 1024 positions ------------------------------------------------
def test_a_reference_too_elongated_for_the_position_table_is_refused_before_any_model(tmp_path):
    """A 20000x16 banner has fewer pixels than the 768x768 area, so it was rendered at its own size: 1250 patches
    across, past the 1024 rows of the transformer's position table, a raw torch shape error ("shape '[1, 1, 1250, -1]'
    is invalid") after the 1.3B transformer had loaded. Now plan_v3 (the CLI) and the V3 Sampler node's size rule
    refuse it, naming the limit and the fix; 16384 px (the most that fits) is still planned."""
    import cv2
    import numpy as np

    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3
    from echomimic_lib.models.wan.transformer import rope_angles, rope_tables
    from echomimic_lib.pipeline.wan.sampler import sample_size
    from tests._media import write_wav

    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    cv2.imwrite(str(tmp_path / "banner.png"), np.full((16, 20000, 3), 128, np.uint8))
    req = V3Request(reference=str(tmp_path / "banner.png"), audio=str(wav), output=str(tmp_path / "o.mp4"),
                    models=str(tmp_path), length=9)
    with pytest.raises(EchoMimicError, match=r"(?s)20000x16.*at most 16384 px a side.*crop"):
        plan_v3(req)
    with pytest.raises(EchoMimicError, match="at most 16384 px a side"):
        sample_size(16, 20000)  # tall, as the node calls it
    assert sample_size(16384, 16) == (16, 16384)
    rope_tables(rope_angles(12), (1, 1, 16384 // 16), "cpu")  # the widest accepted fits the table
    with pytest.raises(ValueError, match="position table holds at most 1024"):  # the model itself, called directly
        rope_tables(rope_angles(12), (1, 1, 1250), "cpu")
    assert not (tmp_path / "o.mp4").exists()
