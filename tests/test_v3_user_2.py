"""EchoMimicV3 flash-pro as a user of the official antgroup/echomimic_v3 code runs it (tiny random weights): each
stumble now a clear error or message naming the problem and the fix, said before any network loads."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from echomimic_lib.cli import main
from tests._media import write_wav

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF, SPEECH = DATA / "images" / "portrait_a.png", DATA / "audio" / "echomimic_en.wav"


def _tone(path: Path, seconds: float, sr: int = 16000) -> Path:
    return write_wav(path, 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr), sr)


# ------------------------------------------------------------------------------------------------- --smoke
def test_a_smoke_run_of_a_short_clip_does_not_name_a_length_the_user_never_gave(tmp_path, caplog):
    """--smoke of a 0.4 s clip warned "--length 25 is beyond the audio": the user gave no --length (25 frames is the
    smoke run's first second); the advice names the smoke run's own length, and an explicit --length is still named."""
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    audio = _tone(tmp_path / "short.wav", 0.4)
    req = V3Request(reference=str(REF), audio=str(audio), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                    size=(64, 64), smoke=True)
    with caplog.at_level(logging.WARNING):
        plan = plan_v3(req)
    assert plan.frames == 9
    assert "--length" not in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        plan = plan_v3(req)
    assert "smoke run" in caplog.text and "0.40 s" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan_v3(V3Request(reference=str(REF), audio=str(audio), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                          size=(64, 64), smoke=True, length=25))
    assert "--length 25 is beyond the audio" in caplog.text, caplog.text


def test_a_smoke_run_still_renders_the_first_second(tmp_path, caplog):
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    req = V3Request(reference=str(REF), audio=str(SPEECH), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                    size=(64, 64), smoke=True)
    with caplog.at_level(logging.WARNING):
        assert plan_v3(req).frames == 25
    assert caplog.text == ""


def test_the_command_line_smoke_run_of_a_short_clip_says_smoke_not_length(tmp_path, capsys):
    audio = _tone(tmp_path / "short.wav", 0.4)
    rc = main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(REF), "--audio", str(audio),
               "-o", str(tmp_path / "out.mp4"), "--models", str(tmp_path / "models"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "--length" not in err, err
    assert (tmp_path / "out.mp4").is_file()


# ------------------------------------------------------------------- the official infer_flash_pro.py's option names
OFFICIAL = ["--image_path", "{ref}", "--audio_path", "{audio}", "--prompt", "A person is speaking.",
            "--num_inference_steps", "8", "--save_path", "{out}", "--sampler_name", "Flow_Unipc", "--video_length", "81",
            "--guidance_scale", "6.0", "--audio_guidance_scale", "3.0", "--seed", "43", "--enable_teacache",
            "--weight_dtype", "bfloat16", "--sample_size", "768", "640", "--negative_prompt", "",
            "--GPU_memory_mode", "model_cpu_offload_and_qfloat8"]


def test_the_official_scripts_options_are_refused_at_once_with_this_tools_names(tmp_path, capsys, monkeypatch):
    """run_flash_pro.sh's options pasted after `echomimic animate` gave argparse's usage screen and "unrecognized
    arguments" (and "--reference, -o are required"), one name at a time. Now every one is named at once, with the same
    command in this tool's words and what to drop, before any file is read or weight loaded."""
    from echomimic_lib.jobs import animate_v3

    monkeypatch.setattr(animate_v3, "run_v3", lambda *a, **k: 1 / 0)
    argv = [a.format(ref=REF, audio=SPEECH, out=tmp_path / "outs") for a in OFFICIAL]
    assert main(["animate", *argv]) == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and "unrecognized" not in err and "required" not in err, err
    assert "--image_path, --audio_path, --num_inference_steps, --save_path" in err
    assert "infer_flash_pro.py" in err
    want = (f"--version v3-flash --reference {REF} --audio {SPEECH} --steps 8 -o {tmp_path / 'outs' / 'output.mp4'} "
            "--length 81 --audio-cfg 3.0 --dtype bf16 --width 640 --height 768 --fp8`")
    assert want in err, err
    for dropped in ("--sampler_name:", "--guidance_scale: no effect", "--enable_teacache:", "--negative_prompt: flash-pro "
                    "has no negative prompt"):
        assert dropped in err, (dropped, err)
    assert not (tmp_path / "outs").exists()


def test_one_official_name_with_this_tools_own_options_is_named_and_dashes_work_too(tmp_path, capsys):
    rc = main(["animate", "--version", "v3-flash", "--reference", str(REF), "--audio", str(SPEECH), "-o",
               str(tmp_path / "o.mp4"), "--audio-guidance-scale", "2.5", "--GPU_memory_mode", "sequential_cpu_offload"])
    err = capsys.readouterr().err
    assert rc == 2 and "usage:" not in err
    assert "--audio-guidance-scale, --GPU_memory_mode are the official" in err and "--audio-cfg 2.5" in err, err
    assert "--GPU_memory_mode: for less GPU memory use --fp8" in err and "--vae-tiling" in err, err
    assert not (tmp_path / "o.mp4").exists()


def test_the_official_names_do_not_change_this_tools_own_options(tmp_path):
    """--audio, --prompt, --seed and --negative-prompt (its own refusal) parse as before."""
    from echomimic_lib.cli import build_parser

    args = build_parser().parse_args(["animate", "--version", "v3-flash", "--reference", "r.png", "--audio", "a.wav",
                                      "-o", "o.mp4", "--prompt", "hi", "--seed", "7", "--audio-cfg", "2"])
    assert (args.audio, args.prompt, args.seed, args.audio_cfg, args.official_names) == ("a.wav", "hi", 7, 2.0, None)
    import pytest

    with pytest.raises(SystemExit):  # still required when no official name is given
        build_parser().parse_args(["animate", "--audio", "a.wav"])


# ------------------------------------------------------------------------------------------------ long speech
def test_a_clip_longer_than_one_shot_says_the_rest_is_not_rendered_and_how_to_render_it(tmp_path, caplog):
    """A 6.2 s clip without --length gave a 3.24 s video (one 81-frame shot, as the official script) and said
    nothing: the user found the video cut short. Now a warning says so and names the --length for the whole clip."""
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    audio = DATA / "audio" / "echomimicv2_woman.wav"
    with caplog.at_level(logging.WARNING):
        plan = plan_v3(V3Request(reference=str(REF), audio=str(audio), output=str(tmp_path / "o.mp4"),
                                 models=str(tmp_path), size=(64, 64)))
    assert plan.frames == 81  # unchanged: the official one shot
    assert "the speech lasts 6.22 s" in caplog.text and "--length 153" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a clip one shot covers, and one asked for in full: nothing to say
        plan_v3(V3Request(reference=str(REF), audio=str(audio), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                          size=(64, 64), length=153))
        plan_v3(V3Request(reference=str(REF), audio=str(_tone(tmp_path / "s.wav", 3.3)), output=str(tmp_path / "o.mp4"),
                          models=str(tmp_path), size=(64, 64)))
    assert caplog.text == "", caplog.text


def test_a_batch_smoke_row_of_a_short_clip_does_not_name_a_length_either(tmp_path, caplog):
    """A batch V3 row with smoke set passed --length 25 itself, so a short clip warned about a --length the row never
    gave; the row's request is a smoke request like the command line's (the same 25 frames for a long clip)."""
    from echomimic_lib.jobs.batch.v3 import V3Row
    from echomimic_lib.jobs.v3_plan import plan_v3

    audio = _tone(tmp_path / "short.wav", 0.4)
    row = V3Row(reference=str(REF), audio=str(audio), output=str(tmp_path / "o.mp4"), models=str(tmp_path), smoke=True)
    with caplog.at_level(logging.WARNING):
        assert plan_v3(row.request("cpu", "float32")).frames == 9
    assert "--length" not in caplog.text, caplog.text
    long_row = V3Row(reference=str(REF), audio=str(SPEECH), output=str(tmp_path / "o.mp4"), models=str(tmp_path),
                     smoke=True)
    assert plan_v3(long_row.request("cpu", "float32")).frames == 25
