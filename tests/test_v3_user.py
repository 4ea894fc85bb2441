"""EchoMimicV3 flash-pro as users run it (tiny random weights): the stumbles a command-line user and a ComfyUI graph
builder met, each now a clear error naming the problem and the fix, said before any network loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from echomimic_lib.cli import main
from echomimic_lib.errors import WeightsError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF, SPEECH = DATA / "images" / "portrait_a.png", DATA / "audio" / "echomimic_en.wav"
BASE_DIR = "Wan2.1-Fun-V1.1-1.3B-InP"
FLASH = "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"


def _animate(tmp_path, *extra, audio=SPEECH, reference=REF, models=None):
    return main(["animate", "--version", "v3-flash", "--reference", str(reference), "--audio", str(audio),
                 "-o", str(tmp_path / "out.mp4"), "--models", str(models or tmp_path / "models"), "--offline",
                 "--width", "64", "--steps", "2", "--length", "9", "--device", "cpu", *extra])


# ------------------------------------------------------------------------------------------ the command line user
def test_a_folder_or_a_missing_file_as_audio_is_named_as_audio(tmp_path, capsys):
    """Was "error: <path>: file not found." (the header read's words, without --audio; a folder called missing)."""
    assert _animate(tmp_path, audio=tmp_path) == 2
    err = capsys.readouterr().err
    assert f"--audio {tmp_path}: is a folder; give a speech recording" in err
    assert _animate(tmp_path, audio=tmp_path / "speech.wav") == 2
    assert f"--audio {tmp_path / 'speech.wav'}: file not found; give a speech recording" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_a_negative_prompt_is_refused_with_the_reason_not_an_argparse_usage_dump(tmp_path, capsys):
    """The official V3 scripts and Wan take a negative prompt; flash-pro never uses it. Was argparse's usage screen and
    "unrecognized arguments: --negative-prompt"; now said before any file is read (the inputs here do not exist)."""
    rc = _animate(tmp_path, "--negative-prompt", "blurry, ugly", audio=tmp_path / "none.wav", reference=tmp_path / "no.png")
    err = capsys.readouterr().err
    assert rc == 2 and "usage:" not in err
    assert "--negative-prompt: EchoMimicV3 flash-pro has no negative prompt" in err and "--prompt" in err


def test_low_vram_with_v3_points_to_v3s_own_memory_options(tmp_path, capsys):
    """A small-GPU user's --low-vram was refused with "drop it" alone; V3's memory options are --fp8 and --vae-tiling."""
    assert _animate(tmp_path, "--low-vram", audio=tmp_path / "none.wav") == 2
    err = capsys.readouterr().err
    assert "--low-vram is a V1/V2 option" in err and "--fp8" in err and "--vae-tiling" in err


# ------------------------------------------------------------- a weights folder holding the wrong or a damaged file
def _wrong_14b(folder: Path) -> str:
    cfg = folder / BASE_DIR / "config.json"
    c = json.loads(cfg.read_text())
    c.update(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096)  # Wan2.1 14B's config
    cfg.write_text(json.dumps(c))
    return r"the base model is 5120 wide.*not 14B"


def _v1_file_as_flash(folder: Path) -> str:
    save_file({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, str(folder / FLASH))  # an SD1.5 / V1 / V2 file
    return r"no 'audio_injection.proj1.weight': not an EchoMimicV3 flash-pro transformer"


def _empty_flash(folder: Path) -> str:
    (folder / FLASH).write_bytes(b"")
    return r"the file is empty \(an interrupted download\?\)"


def _cut_flash(folder: Path) -> str:
    data = (folder / FLASH).read_bytes()
    (folder / FLASH).write_bytes(data[:40])  # the header cut short
    return r"not a readable safetensors file .*Download it again"


def _vae_config_as_base(folder: Path) -> str:
    (folder / BASE_DIR / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "in_channels": 3}))
    return r"config.json describes a AutoencoderKL, not a Wan transformer \(WanModel\)"


BREAKS = {"14b_config": _wrong_14b, "v1_file": _v1_file_as_flash, "empty": _empty_flash, "cut": _cut_flash,
          "vae_config": _vae_config_as_base}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_wrong_or_damaged_transformer_file_is_refused_before_the_text_and_image_encoders_load(tmp_path, monkeypatch,
                                                                                                  capsys, case):
    """The transformer files were checked only when the transformer loaded, after umT5 (11 GB) had encoded the prompt
    and CLIP the reference: minutes of loading, then the error. Now their headers answer before any of them loads."""
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from echomimic_lib.pipeline.wan import encoders

    folder = write_tiny_v3(tmp_path / "models" / "v3-flash")
    said = BREAKS[case](folder)
    loaded = []
    for name in ("load_umt5", "encode_prompt", "clip_features", "load_clip_vision"):
        monkeypatch.setattr(encoders, name, lambda *a, _n=name, **k: loaded.append(_n) or 1 / 0)
    assert _animate(tmp_path) == 2
    err = capsys.readouterr().err
    assert loaded == [], loaded
    import re

    assert re.search(said, err), err
    assert "Traceback" not in err and not (tmp_path / "out.mp4").exists()


def test_the_intact_set_still_renders_and_quiet_means_no_loading_bars(tmp_path, capsys):
    """-q ("errors only: no progress bar") still printed transformers' three "Loading weights" bars (umT5, CLIP,
    wav2vec2) on stderr."""
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    write_tiny_v3(tmp_path / "models" / "v3-flash")
    assert _animate(tmp_path, "-q") == 0
    err = capsys.readouterr().err
    assert (tmp_path / "out.mp4").is_file()
    assert "Loading weights" not in err and "wrote" not in err, err


# --------------------------------------------------------------------------------------- the ComfyUI graph builder
@pytest.mark.parametrize("case", ["14b_config", "v1_file", "empty"])
def test_the_v3_loader_node_refuses_a_wrong_transformer_file_before_wav2vec2_loads(tmp_path, monkeypatch, case):
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from tests._pack import sub

    bridge, v3, errors = sub("nodes.comfy_bridge"), sub("nodes.v3"), sub("echomimic_lib.errors")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    said = BREAKS[case](folder)
    loaded = []
    monkeypatch.setattr(sub("echomimic_lib.audio.wav2vec"), "load_wav2vec", lambda *a, **k: loaded.append(a) or 1 / 0)
    with pytest.raises(errors.WeightsError, match=said):
        v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    assert loaded == []


def test_load_v3_checks_the_transformer_headers_before_wav2vec2_and_clip(tmp_path, monkeypatch):
    """The loaded-set path (a batch worker, the library): the same check first."""
    from echomimic_lib.audio import wav2vec
    from echomimic_lib.jobs.animate_v3 import load_v3, model_files
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    folder = write_tiny_v3(tmp_path / "v3-flash")
    _v1_file_as_flash(folder)
    loaded = []
    monkeypatch.setattr(wav2vec, "load_wav2vec", lambda *a, **k: loaded.append(a) or 1 / 0)
    with pytest.raises(WeightsError, match="not an EchoMimicV3 flash-pro transformer"):
        load_v3(model_files(folder), "cpu", torch.float32)
    assert loaded == []


# ----------------------------------------------------------------------------------------- the long-clip user
@pytest.mark.parametrize("length, frames, said", [
    (86, 85, "--length 86: EchoMimicV3 renders 4k+1 frames"),
    (130, 129, "--length 130: EchoMimicV3 renders 4k+1 frames"),  # the whole 5.24 s clip: 130 frames at 25 fps
    (200, 129, "--length 200 is beyond the audio: it lasts 5.24 s"),
])
def test_a_long_length_the_speech_covers_is_not_called_beyond_the_audio(tmp_path, caplog, length, frames, said):
    """--length 86 of a 5.24 s clip (130 frames) warned "--length 86 is beyond the audio ... the length follows the
    audio": the video was 85 frames by the 4k+1 rule, not because the speech ended."""
    import logging

    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    req = V3Request(reference=str(REF), audio=str(SPEECH), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                    size=(64, 64), length=length)
    with caplog.at_level(logging.WARNING):
        plan = plan_v3(req)
    assert plan.frames == frames
    text = caplog.text
    assert said in text and (length == 200) == ("beyond the audio" in text), text


def test_the_v3_sampler_takes_whole_floats_linked_from_a_math_node_as_its_other_inputs_do(tmp_path, monkeypatch):
    """size 64.0 / steps 2.0 (a Float math node linked in) were refused as "size 64.0: ... needs at least 16 px a side"
    and "steps 2.0: give 1..200", though in range; max_frames and the seed take a whole float (as_whole)."""
    from types import SimpleNamespace

    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae
    from tests._pack import load_pack, sub

    load_pack()
    monkeypatch.setattr(sub("nodes.comfy_bridge"), "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    v3 = sub("nodes.v3")
    (handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    g = torch.Generator().manual_seed(0)
    v3_audio, _ = v3.EchoMimicV3AudioEncoder().execute(
        handle, {"waveform": torch.randn(1, 1, 16000, generator=g) * 0.1, "sample_rate": 16000}, 5)
    positive = [[torch.randn(1, 512, TEXT_DIM, generator=g), {}]]
    clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
    vae, image = DiffusersPixelVAE(load_wan_vae(folder / "vae")), torch.rand(1, 48, 64, 3, generator=g)

    def run(size, steps):
        return v3.EchoMimicV3Sampler().execute(handle, v3_audio, positive, clip, vae, image, size, steps, 3.0, 1, "off",
                                               True)[0]

    assert torch.equal(run(64.0, 2.0), run(64, 2))
    errors = sub("echomimic_lib.errors")
    with pytest.raises(errors.EchoMimicError, match=r"steps 2.5: give 1\.\.200"):
        run(64, 2.5)
