"""The headless user, day 7: `echomimic` from scripts (an unset shell variable as a path, a speech "file" that is a pipe,
a device or a folder for evaluate, ...): each a clear error before any work, exit 2, nothing written."""
from __future__ import annotations

import argparse
import os

import pytest

from echomimic_lib.cli import build_parser, main
from echomimic_lib.cli.v3_official import _Official

# options whose empty value means something (words, a list of parts where '' = none); --device "$DEVICE" unset is no
# default either (a script meant a GPU)
NOT_PATHS = {"prompt", "negative_prompt", "parts"}
# these say an empty name themselves, with an example of their own (test_the_own_empty_messages_stay, test_cli_user_6)
OWN = {("landmarks", "output"), ("landmarks", "preview"), ("poses", "output"), ("poses", "preview"), ("evaluate", "plot"),
       ("make-tiny", "directory"), ("convert", "dst")}
# the positionals and the required options each command needs to get as far as its own checks
POSITIONALS = {"landmarks": ["{d}/v.mp4"], "evaluate": ["{d}/v.mp4"], "make-tiny": ["{d}/tiny"],
               "convert": ["{d}/w.pth", "{d}/w.safetensors"]}
OPTIONS = {"animate": ["--reference", "{d}/r.png", "-o", "{d}/o.mp4"], "dub": ["--video", "{d}/v.mp4", "-o", "{d}/o.mp4"],
           "landmarks": ["-o", "{d}/o.npz"], "poses": ["-o", "{d}/o.npz"]}


def _command_parser(command):
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _path_options():
    """(command, action, flag) of every option and positional of every command that takes a path (batch and queue:
    their own checks, tests/test_cli_mistakes_2.py)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        if name in ("batch", "queue"):
            continue
        for a in parser._actions:
            if (a.type not in (None, str) or a.nargs == 0 or a.choices or a.dest in NOT_PATHS or a.dest == "help"
                    or (name, a.dest) in OWN or isinstance(a, _Official)):  # (the official V3 names: refused as such)
                continue
            flag = a.option_strings[0] if a.option_strings else (a.metavar or a.dest.upper())
            yield name, a, flag


def _argv(command, action, value, tmp_path):
    pos = [w.format(d=tmp_path) for w in POSITIONALS.get(command, [])]
    opts = [w.format(d=tmp_path) for w in OPTIONS.get(command, [])]
    if not action.option_strings:  # a positional: its place among the command's
        pos[[a.dest for a in _command_parser(command)._actions if not a.option_strings].index(action.dest)] = value
    elif action.option_strings[-1] in opts:  # a required option: its value replaced
        opts[opts.index(action.option_strings[-1]) + 1] = value
    else:
        opts.append(f"{action.option_strings[-1]}={value}")
    return [command, *pos, *opts]


CASES = sorted({(c, f) for c, _, f in _path_options()})


# -- 1. an empty path (`--compare "$OTHER"` with OTHER unset) is said as empty, never taken as "not given" ----------
@pytest.mark.parametrize("command,flag", CASES, ids=[f"{c}{f}" for c, f in CASES])
@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "spaces"])
def test_every_empty_path_option_is_refused_as_empty(command, flag, value, tmp_path, capsys, monkeypatch):
    action = next(a for c, a, f in _path_options() if (c, f) == (command, flag))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # an empty path is the current folder: nothing may land there
    rc = main(_argv(command, action, value, tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {flag} is empty") and "give " in err, err
    assert "Traceback" not in err and list(work.iterdir()) == []


@pytest.mark.parametrize("argv,flag,words", [
    (["evaluate", "{d}/v.mp4", "--compare", ""], "--compare", ["the second video", "leave --compare out"]),
    (["evaluate", "{d}/v.mp4", "--audio", ""], "--audio", ["speech", "leave --audio out"]),
    (["dub", "--video", "{d}/v.mp4", "-o", "{d}/o.mp4", "--audio", ""], "--audio", ["speech", "leave --audio out"]),
    (["animate", "--reference", "", "-o", "{d}/o.mp4", "--smoke"], "--reference", ["image"]),
    (["doctor", "--models", ""], "--models", ["models folder", "leave --models out"]),
    (["animate", "--reference", "{d}/r.png", "-o", "{d}/o.mp4", "--lora", "a.safetensors", "--lora", ""], "--lora", ["LoRA", "leave --lora out"]),
], ids=["evaluate-compare", "evaluate-audio", "dub-audio", "animate-reference", "doctor-models", "animate-second-lora"])
def test_the_empty_message_says_what_to_give(argv, flag, words, tmp_path, capsys):
    rc = main([w.format(d=tmp_path) for w in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {flag} is empty"), err
    assert all(w in err for w in words), err
    if "leave" not in words[-1]:
        assert "leave" not in err, err  # a required option cannot be left out


def test_the_own_empty_messages_stay(shared_data, capsys):
    """The commands that already said an empty name with an example keep their words."""
    for argv, words in ((["landmarks", str(shared_data / "video" / "driving_a.mp4"), "-o", ""], "-o is empty; give a file name such as out.npz"),
                        (["evaluate", str(shared_data / "video" / "driving_a.mp4"), "--plot", ""], "--plot is empty; give the PNG file to write"),
                        (["make-tiny", ""], "make-tiny: the folder name is empty"),
                        (["convert", "w.pth", ""], "convert: the destination is empty")):
        assert main(argv) == 2
        assert words in capsys.readouterr().err


# -- 2. evaluate --audio that is a pipe, a device or a folder: said as such (not "not found"), nothing opened ---------
@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video, write_video

    video = read_video(shared_data / "video" / "driving_a.mp4", max_frames=6, with_audio=False)
    wav, sr = read_audio(shared_data / "audio" / "pose_demo_clip.wav")
    return write_video(tmp_path_factory.mktemp("eval7") / "clip.mp4", video.frames, video.fps, wav[:, : sr // 4], sr)


def _speech(kind, tmp_path):
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no named pipes here")
        os.mkfifo(tmp_path / "speech.wav")
        return tmp_path / "speech.wav", "is a named pipe"
    if kind == "device":
        if not os.path.exists("/dev/null"):
            pytest.skip("no /dev/null")
        return "/dev/null", "is a device"
    if kind == "folder":
        (tmp_path / "speech").mkdir()
        return tmp_path / "speech", "is a folder"
    return tmp_path / "none.wav", "file not found"


@pytest.mark.parametrize("kind", ["fifo", "device", "folder", "missing"])
@pytest.mark.parametrize("video", ["clip", "pkl"])
def test_evaluate_names_what_the_audio_is(kind, video, clip, shared_data, tmp_path, capsys):
    speech, words = _speech(kind, tmp_path)
    source = clip if video == "clip" else shared_data / "v1_pose_pkl"
    rc = main(["evaluate", str(source), "--audio", str(speech), "--models", str(tmp_path / "m"), "--offline"])
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.startswith(f"error: --audio {speech}: {words}") and "give " in cap.err, cap
    assert "audio file not found" not in cap.err
    assert cap.out == ""


# -- 3. -q's help says what -q does: no progress bar or status lines; warnings, errors and the result stay ----------
def test_quiet_help_matches_what_quiet_does(clip, tmp_path, capsys):
    for command in ("animate", "dub", "landmarks", "poses", "evaluate", "doctor"):
        text = " ".join(_command_parser(command).format_help().split())
        assert "errors only" not in text and "warnings" in text and "result" in text, (command, text)
    rc = main(["evaluate", str(clip), "--models", str(tmp_path / "m"), "--offline", "--json", "-q"])
    cap = capsys.readouterr()
    assert rc == 0 and "warning: " in cap.err  # (was "errors only")
    assert cap.out.count("\n") == 1 and cap.out.startswith("{")  # the result, alone on stdout


# -- 4. --reference that is a pipe or a device: said as such (was "file not found"; reading it would wait on the pipe)
@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
@pytest.mark.parametrize("command", ["animate", "evaluate"])
def test_a_reference_that_is_no_regular_file_is_named(kind, command, clip, shared_data, tmp_path, capsys):
    picture, words = _speech(kind, tmp_path)  # (the same pipe / device / folder, as a picture)
    if command == "animate":
        argv = ["animate", "--smoke", "--reference", str(picture), "--audio", str(shared_data / "audio" / "echomimic_en.wav"),
                "-o", str(tmp_path / "out.mp4"), "--models", str(tmp_path / "m")]
    else:
        argv = ["evaluate", str(clip), "--reference", str(picture), "--models", str(tmp_path / "m"), "--offline"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.startswith(f"error: --reference {picture}: {words}") and "give " in cap.err, cap
    assert "not found" not in cap.err and not (tmp_path / "out.mp4").exists()


# -- 5. dub --length 0: "follow the audio", as animate's and as the length check's own words say (was refused: "--length
#    must be at least 1 frame", while --length -5 was told "must be 0 (follow the audio) .. 100000") --------------------
def test_dub_length_zero_follows_the_audio(shared_data, tmp_path, capsys, monkeypatch):
    import echomimic_lib.jobs.dub as dub

    seen = []

    def run_dub(req, progress=None):
        seen.append(req.length)
        dub._validate(req)  # the checks; the MediaPipe model is not there: refused after them
        raise AssertionError("no face model, yet the checks passed")

    monkeypatch.setattr(dub, "run_dub", run_dub)
    base = ["dub", "--video", str(shared_data / "video" / "driving_a.mp4"), "--audio",
            str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(tmp_path / "d.mp4"), "--models", str(tmp_path / "m"),
            "--offline", "--length"]
    rc = main([*base, "0"])
    err = capsys.readouterr().err
    assert seen == [None] and "--length" not in err, err  # past every check the length has, to the model look-up
    assert "face_landmarker" in err and rc == 2 and not (tmp_path / "d.mp4").exists(), err
    assert main([*base, "-5"]) == 2 and "--length -5" in capsys.readouterr().err
