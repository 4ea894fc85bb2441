"""Trust audit 19 (66ec656..5782765): each test failed before its fix."""
from __future__ import annotations

from types import SimpleNamespace


def test_a_batch_never_deletes_the_partial_file_of_a_render_that_holds_the_output(tmp_path):
    """`echomimic animate -o out/a.mp4` renders (its claim held, its `.a.<random>.partial.mp4` growing) while
    `echomimic batch -o out/` with a row `a` starts: the batch cleared "what a killed run left" before dispatching and
    again when its row was refused by that claim, deleting the live render's file (its hours lost at the rename)."""
    from echomimic_lib.jobs.batch.results import remove_partials
    from echomimic_lib.jobs.output_file import OutputClaim

    out = tmp_path / "a.mp4"
    live = tmp_path / ".a.x1y2z3.partial.mp4"
    live.write_bytes(b"frames of a render in flight")
    with OutputClaim(out):  # (another process's claim: flock refuses a second open file of this process too)
        assert remove_partials(SimpleNamespace(output=out)) == 0
        assert live.exists()
    with OutputClaim(tmp_path / "a.mov"):  # (a render to a.mov writes the same `.a.<random>.partial.mp4` names)
        assert remove_partials(SimpleNamespace(output=out)) == 0 and live.exists()
    assert remove_partials(SimpleNamespace(output=out)) == 1 and not live.exists()  # its render gone: a leftover
    assert not list(tmp_path.glob(".*.lock"))  # (the claims taken meanwhile are gone)


def test_doctor_names_a_safetensors_header_with_an_endless_offset_instead_of_crashing(tmp_path):
    """`echomimic doctor` read a .safetensors header whose data_offsets held 1e999 (JSON's infinity): int() raised
    OverflowError, which file_problem's except did not list, and doctor ended in a traceback."""
    import struct

    from echomimic_lib.jobs.doctor.models import file_problem

    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,1e999]}}'
    f = tmp_path / "unet.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    why = file_problem(f)
    assert why and "unreadable" in why


def test_a_number_past_any_float_in_a_model_config_or_pose_file_is_a_clear_error(tmp_path):
    """JSON's 1e999 reads as infinity; int() of it raised OverflowError, which the new readers' except lists (a model
    folder's unet/config.json, the trainer's SD1.5 config, a pose .npz's meta) did not name: a traceback instead of
    the file and the fix."""
    import json

    import numpy as np
    import pytest

    from echomimic_lib.errors import EchoMimicError, WeightsError
    from echomimic_lib.model_set import read_config
    from echomimic_lib.pose.io import FORMAT_NAME, load_pose_npz
    from trainer.config import ConfigError
    from trainer.init import sd_unet_config

    unet = tmp_path / "sd" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text('{"block_out_channels": [32, 64], "layers_per_block": 1e999}')
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="config.json: not an EchoMimic UNet config"):
        read_config({"unet_config": str(unet / "config.json")})
    with pytest.raises(ConfigError, match="not a diffusers UNet config"):
        sd_unet_config(tmp_path / "sd")
    meta = json.dumps({"format": FORMAT_NAME, "version": 1}).replace("1}", "1e999}").encode()
    np.savez(tmp_path / "p.npz", meta=np.frombuffer(meta, np.uint8))
    with pytest.raises(EchoMimicError, match="not an EchoMimic pose sequence"):
        load_pose_npz(tmp_path / "p.npz")


def test_an_html_answer_is_read_once_and_only_its_head():
    """`echomimic queue` names an HTML answer (a proxy's page) by its title: the pattern search went back over the whole
    answer (up to 64 MiB) for each unclosed `<title` or `<`, so a page of 240 KB of them took 85 s and one of a few MB
    hours, after the request's deadline had passed. Now only the page's head is read, each character once."""
    from echomimic_lib.jobs import queue_replies as R

    late = "<html><body>" + "x " * R.PAGE_HEAD + "<title>far down</title>"
    assert R.html_page(late) != "far down"  # past the head: not read
    assert R.html_page("<html><head><title>502 Bad Gateway</title></head></html>") == "502 Bad Gateway"
    assert R.html_page("<!DOCTYPE html><html><script>var a = '<b>';</script><p>Sign &amp; in</p>") == "Sign & in"
    assert R.html_page("<html>" + "<title" * 2_000_000) == "no text"  # (12 MB of unclosed tags: was hours)
    assert R.html_page("<html>" + "<script>" * 2_000_000) == "no text"
    assert R.html_page('{"error": "x"}') is None


def test_a_lora_whose_metadata_alpha_is_endless_is_refused_before_the_render():
    """The new metadata checks (each field's JSON kind, true/false for a number) let alpha 1e999 or Infinity through:
    `not alpha > 0` is False for infinity, so a layer without its own alpha tensor was scaled by infinity and the whole
    render came out NaN (black), where a NaN in the adapter's tensors is refused at once."""
    import pytest

    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import FORMAT, LoraInfo

    meta = {"format": FORMAT, "format_version": "1", "weights": "v1_audio", "rank": "4"}
    for alpha in ("1e999", "Infinity", "NaN"):
        with pytest.raises(WeightsError, match="alpha"):
            LoraInfo.from_metadata({**meta, "alpha": alpha}, "style.safetensors")
    assert LoraInfo.from_metadata({**meta, "alpha": "8"}, "style.safetensors").scale == 2.0
