"""Small user-facing fixes: V3 reference message, long V3 prompts, the V3 audio cut, export and download errors."""
import pytest


def test_v3_reference_not_found_names_v3(tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.animate_checks import read_reference

    with pytest.raises(EchoMimicError) as info:
        read_reference(tmp_path / "missing.png", version="v3")
    msg = str(info.value)
    assert "file not found" in msg and "V3" in msg and "(V1)" not in msg and "(V2)" not in msg
    with pytest.raises(EchoMimicError) as info:
        read_reference(tmp_path, version="v3")
    assert "is a folder" in str(info.value) and "(V2)" not in str(info.value)
    with pytest.raises(EchoMimicError) as info:  # V1/V2 keep their wording
        read_reference(tmp_path / "missing.png")
    assert "half-body (V2)" in str(info.value)


def test_plan_v3_reference_message(tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.animate_v3 import V3Request, plan_v3

    req = V3Request(reference=str(tmp_path / "nope.png"), audio=str(tmp_path / "a.wav"), output=str(tmp_path / "o.mp4"),
                    models=str(tmp_path / "m"))
    with pytest.raises(EchoMimicError) as info:
        plan_v3(req)
    assert "--reference" in str(info.value) and "V3" in str(info.value) and "(V2)" not in str(info.value)
