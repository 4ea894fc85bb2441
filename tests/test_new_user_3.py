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


# 3. `make-tiny DIR --version v3-flash` wrote in place: a rerun with another --seed replaced every file without a word
#    (README: make-tiny never replaces a file without --force), DIR the models folder scattered the set's folders beside
#    v1/ and v2/ (where nothing reads them), and --layout comfyui was ignored (the set flat in ComfyUI/models).
def test_make_tiny_v3_keeps_files_it_would_change_unless_force(tmp_path, capsys):
    folder = tmp_path / "v3-flash"
    assert cli(["make-tiny", str(folder), "--version", "v3-flash"]) == 0
    weights = folder / "Wan2.1-Fun-V1.1-1.3B-InP" / "diffusion_pytorch_model.safetensors"
    before = weights.read_bytes()
    assert cli(["make-tiny", str(folder), "--version", "v3-flash"]) == 0  # the same set again: a rerun works
    capsys.readouterr()
    assert cli(["make-tiny", str(folder), "--version", "v3-flash", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "diffusion_pytorch_model.safetensors" in err, err
    assert weights.read_bytes() == before and not [p for p in folder.iterdir() if p.name.startswith(".tiny-")]
    assert cli(["make-tiny", str(folder), "--version", "v3-flash", "--seed", "5", "--force"]) == 0
    assert weights.read_bytes() != before


def test_make_tiny_v3_into_a_models_folder_names_its_v3_flash_folder(tmp_path, capsys):
    models = tmp_path / "models"
    (models / "v1").mkdir(parents=True)
    (models / "sd-vae-ft-mse").mkdir()
    assert cli(["make-tiny", str(models), "--version", "v3-flash"]) == 2
    err = capsys.readouterr().err
    assert "is a models folder (v1/, sd-vae-ft-mse/ in it)" in err and f"make-tiny {models / 'v3-flash'}" in err, err
    assert sorted(p.name for p in models.iterdir()) == ["sd-vae-ft-mse", "v1"]


def test_make_tiny_v3_with_the_comfyui_layout_writes_the_loaders_folder(tmp_path):
    comfy = tmp_path / "ComfyUI_models"
    assert cli(["make-tiny", str(comfy), "--version", "v3-flash", "--layout", "comfyui"]) == 0
    assert [p.name for p in comfy.iterdir()] == ["echomimic"]
    assert (comfy / "echomimic" / "v3-flash" / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors").is_file()


# 4. Windows paths on Linux / macOS: `-o C:\renders\anna.mp4` rendered for minutes, then wrote a file named
#    'C:\renders\anna.mp4' into the current folder; `--reference .\anna.png` was "file not found" beside anna.png. Batch
#    manifests already read them (row_path); the command line reads them the same way now, before any work.
def test_a_windows_drive_path_is_refused_before_any_work(tmp_path, shared_data, speech, no_weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = str(shared_data / "images" / "portrait_a.png")
    assert cli(["animate", "--reference", ref, "--audio", str(speech), "-o", "C:\\renders\\anna.mp4"]) == 2
    err = capsys.readouterr().err
    assert "C:\\renders\\anna.mp4 (output) is a Windows path, which this computer cannot open" in err, err
    assert "/mnt/c/renders/anna.mp4" in err and "Traceback" not in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["speech.wav"]


def test_windows_separators_in_a_relative_path_are_read_as_folders(tmp_path, monkeypatch):
    import argparse

    from echomimic_lib.cli.common import expand_home

    monkeypatch.chdir(tmp_path)
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "anna.png").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "odd\\name.wav").write_bytes(b"x")  # a name holding a backslash, there: kept as written
    args = expand_home(argparse.Namespace(reference=".\\faces\\anna.png", output="out\\anna.mp4", audio="odd\\name.wav",
                                          parts="eyes\\,brows", prompt="a\\b", lora=["faces\\anna.png"]))
    assert (args.reference, args.output, args.audio) == ("./faces/anna.png", "out/anna.mp4", "odd\\name.wav")
    assert (args.parts, args.prompt, args.lora) == ("eyes\\,brows", "a\\b", ["faces/anna.png"])


def test_the_trainer_refuses_a_windows_drive_path_with_an_error_line(capsys):
    from trainer.cli import main

    assert main(["fit", "--config", "D:\\runs\\run.yaml"]) == 2
    err = capsys.readouterr().err
    assert "D:\\runs\\run.yaml (config) is a Windows path" in err and "Traceback" not in err, err


# 5. `echomimic poses` / `echomimic landmarks` refuse an existing -o without --force, but only at the start: the same
#    command run twice at once (two terminals), or anything writing -o meanwhile, was replaced at the end without a word.
def test_poses_keep_an_output_that_appeared_while_they_ran(tmp_path, shared_data, monkeypatch, capsys):
    import echomimic_lib.jobs.poses as poses

    out = tmp_path / "talk.npz"
    made = poses.stabilize_poses

    def meanwhile(seq, level):
        out.write_bytes(b"another run's poses")
        return made(seq, level)

    monkeypatch.setattr(poses, "stabilize_poses", meanwhile)
    assert cli(["poses", "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--length", "24",
                "--gesture-library", str(shared_data / "pose" / "01")]) == 2
    err = capsys.readouterr().err
    assert f"-o {out} appeared while this command ran" in err and "--force" in err, err
    assert out.read_bytes() == b"another run's poses" and sorted(p.name for p in tmp_path.iterdir()) == ["talk.npz"]


def test_landmarks_keep_an_output_that_appeared_while_they_ran(tmp_path, shared_data, monkeypatch, capsys):
    import echomimic_lib.landmarks.stabilize as stabilize

    out = tmp_path / "driving.npz"
    made = stabilize.stabilize_landmarks

    def meanwhile(seq, level):
        out.write_bytes(b"another run's landmarks")
        return made(seq, level)

    monkeypatch.setattr(stabilize, "stabilize_landmarks", meanwhile)
    assert cli(["landmarks", str(shared_data / "video" / "driving_a.mp4"), "-o", str(out), "--mediapipe-model",
                str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")]) == 2
    err = capsys.readouterr().err
    assert f"-o {out} appeared while this command ran" in err, err
    assert out.read_bytes() == b"another run's landmarks" and sorted(p.name for p in tmp_path.iterdir()) == ["driving.npz"]


# 6. A batch manifest's misspelt column listed every known column (40 names) without the one meant, unlike 1.
def test_a_misspelt_batch_column_names_the_column_meant(tmp_path, shared_data, capsys):
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("name,refrence,audio,steps\n"
                        f"anna,{shared_data / 'images' / 'portrait_a.png'},{shared_data / 'audio' / 'echomimic_en.wav'},1\n")
    assert cli(["batch", str(manifest), "-o", str(tmp_path / "renders")]) == 2
    err = capsys.readouterr().err
    assert "line 2: unknown column 'refrence' for animate; did you mean 'reference'?" in err, err
    assert not (tmp_path / "renders").exists() or not any((tmp_path / "renders").iterdir())


# 7. `--pose poses/01/0.npy` (one frame of a released pose folder: a tab completion too far) rendered the whole video
#    with the hands held still, after a warning about 'continue' having no gesture; the folder is named now.
def test_one_frame_of_a_pose_folder_given_as_pose_names_the_folder(tmp_path, shared_data, speech, no_weights, capsys):
    frame = shared_data / "pose" / "01" / "0.npy"
    out = tmp_path / "v2.mp4"
    assert cli(["animate", "--version", "v2", "--pose", str(frame), "--reference", str(shared_data / "images" /
                "halfbody_0035.png"), "--audio", str(speech), "-o", str(out), "--offline", "--width", "64", "--height", "64",
                "--models", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err
    assert f"--pose {frame}: one frame of the pose folder {frame.parent}" in err, err
    assert f"give the folder: --pose {frame.parent}." in err and not out.exists(), err
