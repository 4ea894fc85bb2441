"""A new user following README.md with tiny random weights and the shared media: the mistakes that tripped them.

Each test is one problem found that way: the message names the problem and the fix, before any work."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main as cli


# 1. A misspelt option was said by the top-level parser ("usage: echomimic [-h] [-v] COMMAND ...") with no hint of
#    the option meant: the sub-command's usage and the close option are named now (echomimic and echomimic-train).
@pytest.mark.parametrize("argv,prog,wrong,meant", [
    (["animate", "--refrence", "r.png", "--audio", "a.wav", "-o", "o.mp4"], "echomimic animate", "--refrence", "--reference"),
    (["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--lenght=8"], "echomimic animate", "--lenght",
     "--length"),
    (["poses", "--audio", "a.wav", "-o", "t.npz", "--expresiveness", "1"], "echomimic poses", "--expresiveness",
     "--expressiveness"),
    (["dub", "--video", "v.mp4", "-o", "d.mp4", "--referencee-frame", "3"], "echomimic dub", "--referencee-frame",
     "--reference-frame"),
])
def test_a_misspelt_option_names_the_option_meant(argv, prog, wrong, meant, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"usage: {prog}" in err and f"{prog}: error: unrecognized arguments: {wrong}" in err, err
    assert f"{wrong}: did you mean {meant}?" in err, err


def test_an_unknown_word_without_a_close_option_is_still_named_without_a_guess(capsys):
    assert cli(["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "echomimic animate: error: unrecognized arguments: --frobnicate" in err and "did you mean" not in err, err


def test_the_trainer_names_the_option_meant_too(capsys):
    from trainer.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["fit", "--config", "run.yaml", "--resmue"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "echomimic-train fit: error: unrecognized arguments: --resmue" in err, err
    assert "--resmue: did you mean --resume?" in err, err


# 2. --models given the folder above the models folder (the project folder, ComfyUI/models) or a Hugging Face cache:
#    the first message asked for MediaPipe's model in <that folder>/mediapipe, the next for every weight there, with
#    `echomimic download ... --models <that folder>` (gigabytes into the wrong place). The folder is named now.
@pytest.fixture
def speech(tmp_path, shared_data):
    from echomimic_lib.io.audio_file import read_audio
    from tests._media import write_wav

    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    return write_wav(tmp_path / "speech.wav", wav[0, : int(1.2 * sr)], sr)


@pytest.fixture
def no_weights(monkeypatch):
    import echomimic_lib.model_set as model_set

    def refuse(*args, **kwargs):
        raise AssertionError("weights were looked for before --models was checked")

    monkeypatch.setattr(model_set, "ensure_weights", refuse)
    monkeypatch.setattr(model_set, "load_models", refuse)


def _animate(shared_data, speech, models, out):
    return cli(["animate", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio", str(speech),
                "-o", str(out), "--models", str(models), "--offline", "--width", "64", "--height", "64", "--steps", "1"])


@pytest.mark.parametrize("inside", ["models", "echomimic"])
def test_models_given_the_folder_above_the_models_folder_names_it(inside, tmp_path, shared_data, speech, no_weights, capsys):
    parent = tmp_path / "project"
    (parent / inside / "v1").mkdir(parents=True)
    (parent / inside / "sd-vae-ft-mse").mkdir()
    (parent / "checkpoints").mkdir()  # ComfyUI/models' other folders
    out = tmp_path / "out.mp4"
    assert _animate(shared_data, speech, parent, out) == 2
    err = capsys.readouterr().err
    assert f"--models {parent}: holds no EchoMimic weights, but {parent / inside} does" in err, err
    assert f"give --models {parent / inside}" in err and "MediaPipe" not in err, err
    assert not out.exists() and not (parent / "mediapipe").exists()


def test_models_given_a_hugging_face_cache_says_so(tmp_path, shared_data, speech, no_weights, capsys):
    hub = tmp_path / "hub"
    (hub / "models--BadToBest--EchoMimic" / "snapshots" / "abc123").mkdir(parents=True)
    (hub / "models--stabilityai--sd-vae-ft-mse").mkdir()
    assert _animate(shared_data, speech, hub, tmp_path / "out.mp4") == 2
    err = capsys.readouterr().err
    assert f"--models {hub}: a Hugging Face download cache (models--BadToBest--EchoMimic" in err, err
    assert "echomimic download --weights v1_audio --models DIR" in err, err


@pytest.mark.parametrize("layout", ["empty", "weights", "release"])
def test_a_models_folder_itself_or_a_new_one_is_taken_as_before(layout, tmp_path):
    from echomimic_lib.jobs.models_folder import check_models_folder

    root = tmp_path / "m"
    root.mkdir()
    (root / "other" / "v1").mkdir(parents=True)  # a models folder below does not matter once this one holds weights
    if layout == "weights":
        (root / "v1").mkdir()
    elif layout == "release":  # a release's pretrained_weights/ (files flat)
        (root / "reference_unet.pth").write_bytes(b"x")
    if layout == "empty":
        (root / "other" / "v1").rmdir()
    assert check_models_folder(root) == root
