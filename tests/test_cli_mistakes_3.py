"""User mistakes given to the headless commands, third hunt (after ``test_cli_mistakes_2``): ``convert`` stopped by
Ctrl-C, ``evaluate`` and ``poses --video`` given something that is no video, ``evaluate --device`` that does not exist,
``dub --seed -1``. Each is refused with exit code 2 (130 for the interrupt), a message naming the option, the problem and
the fix, no traceback, before any model is loaded or downloaded, and nothing is left half-written."""
from __future__ import annotations

import pytest
import torch

from echomimic_lib.cli import main as cli
from tests._media import write_wav
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data):
    """A second of speech, a portrait, a driving video, and the wrong things users give: a text file, an empty file."""
    from echomimic_lib.io.audio_file import read_audio

    d = tmp_path_factory.mktemp("mistakes3")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    (d / "notes.txt").write_text("my notes\n")
    (d / "empty.mp4").write_bytes(b"")
    return {"speech": write_wav(d / "speech.wav", wav[0, :sr], sr), "ref": shared_data / "images" / "portrait_a.png",
            "video": shared_data / "video" / "driving_a.mp4", "text": d / "notes.txt", "empty": d / "empty.mp4",
            "mp": shared_data / "mediapipe" / MP_MODEL}


def _run(args, capsys):
    rc = cli([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "report it" not in err, err
    return rc, err


def _tree(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------------------ convert + Ctrl-C
@pytest.fixture
def weights(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i, name in enumerate(("a.pth", "b.pth", "sub/c.pth")):
        torch.save({"w": torch.full((3,), float(i))}, src / name)
    return src


def _interrupt_on(monkeypatch, module, name, call: int):
    """``module.name`` raises KeyboardInterrupt (Ctrl-C) at its ``call``-th call; earlier calls go through."""
    real, calls = getattr(module, name), []

    def f(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise KeyboardInterrupt()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, f)
    return calls


@pytest.mark.parametrize("where", ["read", "write"])
def test_convert_of_a_folder_stopped_by_ctrl_c_leaves_no_folder_and_no_file(where, weights, tmp_path, monkeypatch, capsys):
    """``echomimic convert FOLDER new/out`` stopped by Ctrl-C after the first file: the files written were removed, but
    the folders made for them (new/, new/out/, new/out/sub/) stayed, empty; a user took them for a finished conversion."""
    import safetensors.torch as st

    import echomimic_lib.io.weights as w

    calls = (_interrupt_on(monkeypatch, w, "read_state_dict", 3) if where == "read"
             else _interrupt_on(monkeypatch, st, "save_file", 3))
    out = tmp_path / "new" / "out"
    rc, err = _run(["convert", weights, out], capsys)
    assert rc == 130 and "interrupted" in err, err
    assert len(calls) == 3 and not (tmp_path / "new").exists(), _tree(tmp_path)


def test_convert_forced_over_existing_files_and_stopped_keeps_every_old_file(weights, tmp_path, monkeypatch, capsys):
    """``convert FOLDER OUT --force`` into a folder that holds the user's earlier conversion (and other files): Ctrl-C
    after the first file was written removed that file, so the user's old a.safetensors was lost, neither old nor new."""
    import safetensors.torch as st

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.safetensors").write_bytes(b"the earlier a")
    (out / "sub" / "c.safetensors").write_bytes(b"the earlier c")
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    _interrupt_on(monkeypatch, st, "save_file", 3)
    rc, err = _run(["convert", weights, out, "--force"], capsys)
    assert rc == 130, err
    assert _tree(out) == before  # no new file, no temporary file, every old one as it was


def test_convert_stopped_while_moving_the_files_into_place_puts_the_old_ones_back(weights, tmp_path, monkeypatch, capsys):
    """Ctrl-C between the moves of the finished files: the ones already moved are taken back, the replaced ones restored."""
    import echomimic_lib.io.file_safety as fs

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "b.safetensors").write_bytes(b"the earlier b")
    before = _tree(out)
    calls = _interrupt_on(monkeypatch, fs, "publish", 3)  # a and b in place, c not yet
    rc, err = _run(["convert", weights, out, "--force"], capsys)
    assert rc == 130 and len(calls) == 3, err
    assert _tree(out) == before


def test_convert_still_writes_every_file_and_replaces_only_when_forced(weights, tmp_path, capsys):
    from echomimic_lib.io.weights import read_state_dict

    out = tmp_path / "new" / "out"
    rc, err = _run(["convert", weights, out], capsys)
    assert rc == 0, err
    assert sorted(_tree(out)) == ["a.safetensors", "b.safetensors", "sub", "sub/c.safetensors"]
    assert torch.equal(read_state_dict(out / "sub" / "c.safetensors")["w"], torch.full((3,), 2.0))
    (out / "b.safetensors").write_bytes(b"mine")
    rc, err = _run(["convert", weights, out], capsys)
    assert rc == 2 and "--force" in err and (out / "b.safetensors").read_bytes() == b"mine"
    rc, err = _run(["convert", weights, out, "--force"], capsys)
    assert rc == 0 and torch.equal(read_state_dict(out / "b.safetensors")["w"], torch.full((3,), 1.0))
    assert sorted(_tree(out)) == ["a.safetensors", "b.safetensors", "sub", "sub/c.safetensors"]  # no temporary file left


def test_convert_of_one_file_into_new_folders_stopped_leaves_none(weights, tmp_path, monkeypatch, capsys):
    import safetensors.torch as st

    _interrupt_on(monkeypatch, st, "save_file", 1)
    rc, err = _run(["convert", weights / "a.pth", tmp_path / "x" / "y" / "a.safetensors"], capsys)
    assert rc == 130 and not (tmp_path / "x").exists(), err


# ------------------------------------------------------------------------------------------------ evaluate VIDEO
@pytest.fixture
def no_models(monkeypatch):
    """MediaPipe's face landmarker and the learned metrics' loaders, replaced by recorders that fail loudly."""
    import echomimic_lib.evaluate.passes as passes
    import echomimic_lib.landmarks.extractor as extractor

    calls = []

    def recorder(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called before the input was checked")
        return f

    monkeypatch.setattr(extractor, "FaceLandmarkExtractor", recorder("FaceLandmarkExtractor"))
    monkeypatch.setattr(passes, "load_syncnet", recorder("load_syncnet"), raising=False)
    return calls


@pytest.mark.parametrize("what,words", [
    ("text", "cannot be opened as a media file (Invalid data found when processing input): it is a text file, not a video"),
    ("empty", "the file is empty (0 bytes)"),
    ("ref", "a still image (1 frame), not a video"),
    ("speech", "no video frames (an audio file?)"),
])
@pytest.mark.parametrize("flag", ["VIDEO", "--compare"])
def test_evaluate_names_what_its_video_is_and_asks_for_a_video(what, words, flag, files, tmp_path, no_models, capsys):
    """``echomimic evaluate notes.txt`` said '...: cannot be opened as a media file (...); it is damaged or not
    audio/video: use a wav, mp3, flac, m4a or mp4 file' (audio advice for a video input); a sound file 'the file has no
    video stream' with no fix; an empty file was not called empty."""
    args = (["evaluate", files[what]] if flag == "VIDEO" else ["evaluate", files["video"], "--compare", files[what]])
    rc, err = _run(args + ["--offline", "--models", tmp_path / "models"], capsys)
    assert rc == 2 and f"{flag} {files[what]}: {words}; evaluate scores a video (mp4, mov, webm, ...)" in err, err
    assert "use a wav" not in err and no_models == [], err


def test_evaluate_real_that_is_no_video_is_named_with_its_option(files, tmp_path, no_models, capsys):
    rc, err = _run(["evaluate", files["video"], "--real", files["text"], "--offline", "--models", tmp_path / "m"], capsys)
    assert rc == 2 and f"--real {files['text']}: " in err and "it is a text file" in err and "for FID / FVD" in err, err
    assert no_models == []


# ------------------------------------------------------------------------------------------------ evaluate --device
@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda"])
def test_evaluate_checks_its_device_like_every_command(device, files, tmp_path, no_models, capsys):
    """``evaluate VIDEO --device gpu`` with no learned metric (no SyncNet, ArcFace, ... weights) was never checked: the
    table came out as if the option were right; ``--device cuda`` on a machine without CUDA too."""
    from echomimic_lib.devices import resolve_device
    from echomimic_lib.errors import EchoMimicError

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: --device cuda is right")
    with pytest.raises(EchoMimicError) as expected:
        resolve_device(device)
    rc, err = _run(["evaluate", files["video"], "--device", device, "--offline", "--models", tmp_path / "m"], capsys)
    assert rc == 2 and f"error: {expected.value}" in err, err
    assert no_models == []


# ------------------------------------------------------------------------------------------------ poses --video
@pytest.mark.parametrize("what,words", [
    ("ref", "a still picture (1 frame), not a video"),
    ("text", "cannot be opened as a media file (Invalid data found when processing input): it is a text file, not a video"),
    ("empty", "the file is empty (0 bytes)"),
    ("speech", "no video frames (an audio file?)"),
])
def test_poses_video_that_is_no_video_is_refused_before_dwpose_downloads(what, words, files, tmp_path, monkeypatch, capsys):
    """``echomimic poses --video photo.png -o p.npz`` (no --offline) downloaded DWPose's two ONNX files (hundreds of
    MB) into the models folder before anything found the input is a still picture."""
    import huggingface_hub

    import echomimic_lib.pose.dwpose as dwpose

    def no_download(*args, **kwargs):
        raise AssertionError("DWPose was looked up / downloaded before the input was checked")

    monkeypatch.setattr(dwpose, "resolve_dwpose_models", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    out, models = tmp_path / "p.npz", tmp_path / "models"
    rc, err = _run(["poses", "--video", files[what], "-o", out, "--models", models], capsys)
    assert rc == 2 and f"--video {files[what]}: {words}" in err and "give a driving video of a person" in err, err
    assert not out.exists() and not models.exists()


# ------------------------------------------------------------------------------------------------ dub --seed
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_dub_seed_out_of_range_names_the_flag(seed, files, tmp_path, loads, capsys):  # noqa: F811
    """``dub --seed -1`` said 'seed -1: ... in ComfyUI, set the seed's control to randomize', the node's words."""
    out = tmp_path / "out.mp4"
    rc, err = _run(["dub", "--video", files["video"], "--audio", files["speech"], "-o", out, "--offline", "--seed", seed,
                    "--mediapipe-model", files["mp"]], capsys)
    assert rc == 2 and f"error: --seed {seed}: use a whole number from 0 to 2^64-1" in err and "ComfyUI" not in err, err
    assert loads == [] and not out.exists()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_animate_seed_out_of_range_names_the_flag_too(version, files, tmp_path, loads, capsys):  # noqa: F811
    out = tmp_path / "out.mp4"
    rc, err = _run(["animate", "--version", version, "--smoke", "--reference", files["ref"], "--audio", files["speech"],
                    "-o", out, "--seed", "-1", "--models", tmp_path / "m"], capsys)
    assert rc == 2 and "error: --seed -1: use a whole number from 0 to 2^64-1" in err, err
    assert loads == [] and not out.exists()


@pytest.mark.parametrize("extra,words", [
    (["--steps", "0"], "--steps 0: use 1..200 denoising steps (left out: the default: 30, or 6 with --acc)"),
    (["--cfg", "-3"], "--cfg -3.0: guidance must be between 0 and 20 (left out: the default: 2.5"),
    (["--fps", "0"], "--fps 0.0: the frame rate must be a number between 1 and 120"),
    (["--width", "63"], "--width 63: width and height must be positive multiples of 8 (the VAE works on 8-px blocks: 63 is "
                        "not a multiple of 8); try --width 64"),
    (["--height", "0"], "--height 0: at least 64 px"),
    (["--context-frames", "0"], "--context-frames 0: use 1..32 frames per window"),
    (["--context-overlap", "12"], "--context-overlap 12: must be 0..11 (smaller than --context-frames 12)"),
], ids=["steps", "cfg", "fps", "width", "height", "context-frames", "context-overlap"])
def test_dub_numbers_are_named_as_their_flags(extra, words, files, tmp_path, loads, capsys):  # noqa: F811
    """The sampler's own words named the node's inputs: 'steps must be at least 1.', 'context overlap must be >= 0 and
    smaller than the context frames.', 'width and height must be positive multiples of 8 (got 63x512)'."""
    out = tmp_path / "out.mp4"
    rc, err = _run(["dub", "--video", files["video"], "--audio", files["speech"], "-o", out, "--offline",
                    "--mediapipe-model", files["mp"]] + extra, capsys)
    assert rc == 2 and f"error: {words}" in err, err
    assert loads == [] and not out.exists()
