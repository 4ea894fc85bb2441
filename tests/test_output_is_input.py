"""An output that is one of the command's own inputs is refused before any work: the finished video would be renamed
over the input (``dub -o`` the source video, ``animate -o`` the --audio video, a batch row named like another row's
input in the -o folder), and the input would be lost."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


@pytest.fixture(scope="module")
def talk(tmp_path_factory, shared_data):
    """A short video of a face with a sound track (usable as --video, --audio and --landmarks)."""
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import read_video, write_video

    d = tmp_path_factory.mktemp("talk")
    clip = read_video(shared_data / "video" / "driving_a.mp4", max_frames=12, with_audio=False)
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    return write_video(d / "talk.mp4", clip.frames, 24, wav[:, :sr], sr)


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _copy(src: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(src.read_bytes())
    return folder / name


@pytest.mark.parametrize("case", ["dub-video", "dub-video-through-a-link", "animate-audio", "animate-landmarks",
                                  "v3-audio"])
def test_an_output_that_is_an_input_is_refused_before_any_weight(case, talk, shared_data, tmp_path, loads, capsys):  # noqa: F811
    video = _copy(talk, tmp_path, "mine.mp4")
    before = _digest(video)
    out, flag = video, {"dub-video": "--video", "dub-video-through-a-link": "--video", "animate-audio": "--audio",
                        "animate-landmarks": "--landmarks", "v3-audio": "--audio"}[case]
    common = ["--models", str(tmp_path / "models"), "--offline", "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)]
    ref, speech = shared_data / "images" / "portrait_a.png", shared_data / "audio" / "echomimic_en.wav"
    if case == "dub-video-through-a-link":
        out = tmp_path / "link.mp4"
        out.symlink_to(video)
    if case.startswith("dub"):
        args = ["dub", "--video", str(video), "--audio", str(speech), "-o", str(out)]
    elif case == "animate-audio":
        args = ["animate", "--reference", str(ref), "--audio", str(video), "-o", str(out)]
    elif case == "animate-landmarks":
        args = ["animate", "--reference", str(ref), "--audio", str(speech), "--mode", "audio+landmarks", "--landmarks",
                str(video), "-o", str(out)]
    else:
        common = common[:3]
        args = ["animate", "--version", "v3-flash", "--reference", str(ref), "--audio", str(video), "-o", str(out)]
    rc = cli(args + common)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "is the same file as" in err and flag in err and "Choose another -o name" in err, err
    assert loads == [] and _digest(video) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine.mp4"] + (["link.mp4"] if "link" in case else []))


def test_a_batch_row_that_would_write_over_an_input_stops_the_batch(talk, shared_data, tmp_path, loads, capsys):  # noqa: F811
    folder = tmp_path / "media"
    video = _copy(talk, folder, "talk.mp4")
    other = _copy(talk, folder, "other.mp4")
    _copy(shared_data / "images" / "portrait_a.png", folder, "face.png")
    digests = {p.name: _digest(p) for p in folder.iterdir()}
    rows = [{"reference": "face.png", "audio": "talk.mp4", "name": "talk"},  # its own input
            {"reference": "face.png", "audio": "talk.mp4", "name": "other"},  # line 3's input
            {"reference": "face.png", "audio": "other.mp4", "name": "fine"}]
    manifest = folder / "jobs.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = cli(["batch", str(manifest), "-o", str(folder), "--smoke", "--models", str(tmp_path / "models"), "--no-scores"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert f"line 1: the output {video} is the audio of line 1" in err, err
    assert f"line 2: the output {other} is the audio of line 3" in err, err
    assert "2 row(s) cannot be run" in err and "Give this row another name" in err, err
    assert loads == [] and {p.name: _digest(p) for p in folder.iterdir() if p.name != "jobs.jsonl"} == digests


def write_training_checkpoint(tmp_path, vae, whisper, monkeypatch):
    """A tiny step-2 training checkpoint (one tensor a network) whose meta names ``vae`` and ``whisper``; the export's
    config stays the default one."""
    import torch
    from safetensors.torch import save_file

    import trainer.export as ex
    from echomimic_lib.config import EchoConfig

    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    save_file({"reference.a": torch.ones(2), "denoiser.b": torch.ones(2), "denoiser.x.motion_modules.c": torch.ones(2),
               "cond_encoder.d": torch.ones(2)}, str(ckpt / "model.safetensors"))
    (ckpt / "meta.json").write_text(json.dumps({"step": 2, "weights": "v1_audio", "echo_config": {}, "vae_path": str(vae),
                                                "whisper_path": str(whisper), "lora": None}))
    monkeypatch.setattr(ex.EchoConfig, "from_dict", staticmethod(lambda d: EchoConfig()))
    return ckpt


@pytest.mark.parametrize("link", [False, True], ids=["copy", "link"])
def test_export_into_the_models_folder_the_run_read_keeps_its_vae_and_whisper(tmp_path, monkeypatch, capsys, link):
    """``echomimic-train export RUN MODELS --force`` where MODELS holds the VAE and whisper the run trained with: they
    are the export's own sources, kept as they are (they were deleted, then the copy failed)."""

    from trainer.cli import main

    models = tmp_path / "models"
    vae, whisper = models / "sd-vae-ft-mse", models / "audio_processor" / "whisper_tiny.pt"
    vae.mkdir(parents=True)
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"the user's VAE")
    whisper.parent.mkdir()
    whisper.write_bytes(b"the user's whisper")
    ckpt = write_training_checkpoint(tmp_path, vae, whisper, monkeypatch)
    rc = main(["export", str(ckpt), str(models), "--no-verify", "--force"] + (["--link"] if link else []))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (vae / "diffusion_pytorch_model.safetensors").read_bytes() == b"the user's VAE" and not vae.is_symlink()
    assert whisper.read_bytes() == b"the user's whisper" and not whisper.is_symlink()
    assert (models / "denoising_unet.pth").is_file() and (models / "export.json").is_file()


@pytest.mark.parametrize("command", ["export", "v3-export"])
def test_a_lora_export_over_the_checkpoints_own_weights_is_refused_even_with_force(command, tmp_path, capsys):
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, lora=True)
    if command == "v3-export":
        meta = json.loads((ckpt / "meta.json").read_text())
        (ckpt / "meta.json").write_text(json.dumps({**meta, "family": "v3", "lora": {**meta["lora"], "layers": 1}}))
    weights = ckpt / "model.safetensors"
    before = _digest(weights)
    rc = main([command, str(ckpt), str(weights), "--force", "--no-verify"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert f"DEST {weights} is the same file as the checkpoint's model.safetensors" in err and "Choose another DEST" in err, err
    assert _digest(weights) == before and sorted(p.name for p in ckpt.iterdir()) == ["meta.json", "model.safetensors"]


@pytest.mark.parametrize("case,words", [
    ("plot-is-the-video", ["--plot", "mine.mp4", "the plot is a PNG image", "--plot", "mine.png"]),
    ("plot-is-the-reference", ["--plot", "face.png", "is the same file as --reference", "Choose another --plot name"]),
    ("plot-inside-a-file", ["--plot", "afile is a file, not a folder"]),
])
def test_evaluate_checks_plot_before_scoring_and_never_writes_it_over_an_input(case, words, talk, shared_data, tmp_path,
                                                                                monkeypatch, capsys):
    import echomimic_lib.evaluate as ev

    video = _copy(talk, tmp_path, "mine.mp4")
    face = _copy(shared_data / "images" / "portrait_a.png", tmp_path, "face.png")
    (tmp_path / "afile").write_text("x")
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    monkeypatch.setattr(ev, "load_clip", lambda *a, **k: pytest.fail("the clip was read before --plot was checked"))
    plot = {"plot-is-the-video": video, "plot-is-the-reference": face, "plot-inside-a-file": tmp_path / "afile" / "p.png"}[case]
    rc = cli(["evaluate", str(video), "--reference", str(face), "--plot", str(plot), "--offline"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before
