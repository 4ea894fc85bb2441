"""End to end: `echomimic make-tiny` then `echomimic animate` on the shared media, and bad input."""

import numpy as np
import pytest

from echomimic_lib.audio import audio_frame_count
from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe
from tests._media import write_wav

SECONDS = 1.2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    assert cli(["make-tiny", str(d)]) == 0  # v1/ and v2/ with shared VAE, whisper and configs
    return d


@pytest.fixture(scope="module")
def speech(tmp_path_factory, shared_data):
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    return write_wav(tmp_path_factory.mktemp("audio") / "clip.wav", wav[0, : int(SECONDS * sr)], sr)


def _common(tiny, out, size=64):
    return ["--models", str(tiny), "-o", str(out), "--width", str(size), "--height", str(size), "--steps", "1", "--offline", "-q"]


@pytest.mark.slow
def test_animate_v1_audio_writes_a_playable_mp4_with_audio(tiny, speech, shared_data, tmp_path):
    out = tmp_path / "v1.mp4"
    rc = cli(["animate", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio", str(speech),
              "--mediapipe-model", str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")] + _common(tiny, out))
    assert rc == 0
    info = probe(out)
    wav, sr = read_audio(speech)
    # the video follows the audio: floor(seconds x fps) frames, never longer than the sound
    assert info["frames"] == int(SECONDS * 24) == 28 < audio_frame_count(wav, 24, sample_rate=sr)
    assert info["width"] == 64 and info["fps"] == 24
    video_s = info["frames"] / info["fps"]
    assert info["audio_seconds"] is not None and abs(info["audio_seconds"] - video_s) < 0.05


@pytest.mark.slow
def test_animate_v2_halfbody_with_pose_folder(tiny, speech, shared_data, tmp_path):
    out = tmp_path / "v2.mp4"
    rc = cli(["animate", "--version", "v2", "--acc", "--reference", str(shared_data / "images" / "halfbody_0035.png"),
              "--audio", str(speech), "--pose", str(shared_data / "pose" / "fight")] + _common(tiny, out))
    assert rc == 0 and probe(out)["frames"] > 20


@pytest.mark.slow
def test_animate_v1_selected_landmarks_from_pkl_frames(tiny, speech, shared_data, tmp_path):
    out = tmp_path / "lm.mp4"
    rc = cli(["animate", "--mode", "audio+landmarks", "--reference", str(shared_data / "images" / "pose_demo_d.jpg"),
              "--audio", str(speech), "--landmarks", str(shared_data / "v1_pose_pkl"), "--no-face-crop"] + _common(tiny, out))
    assert rc == 0 and probe(out)["frames"] > 20


def _fails(capsys, args, out, pattern):
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert pattern in err, err
    assert not out.exists() and not list(out.parent.glob("*.mp4")) and not list(out.parent.glob(".*partial*"))


@pytest.mark.slow
def test_bad_input_gives_clear_errors_and_no_partial_file(tiny, speech, shared_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out" / "x.mp4"
    ref = str(shared_data / "images" / "portrait_a.png")
    base = ["animate", "--reference", ref, "--audio", str(speech)]
    _fails(capsys, base + _common(tiny, out, size=60), out, "multiples of 8")
    _fails(capsys, base + ["--version", "v2", "--mode", "audio"] + _common(tiny, out), out, "belongs to EchoMimic V1")
    _fails(capsys, base + ["--version", "v2"] + _common(tiny, out), out, "needs a hand-pose sequence")
    bad_img = tmp_path / "broken.png"
    bad_img.write_bytes(b"not an image")
    _fails(capsys, ["animate", "--reference", str(bad_img), "--audio", str(speech)] + _common(tiny, out), out, "not an image")
    # too few condition frames with the 'fail' retiming policy
    from echomimic_lib.pose import load_pose, save_pose_npz

    short = save_pose_npz(load_pose(shared_data / "pose" / "fight")[:5], tmp_path / "short.npz")
    _fails(capsys, ["animate", "--version", "v2", "--reference", ref, "--audio", str(speech), "--pose", str(short),
                    "--retime", "fail"] + _common(tiny, out), out, "covers 5 frames")

    # a failed download: empty models folder, download attempted and refused
    def no_network(**kw):
        raise OSError("network unreachable")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    empty = tmp_path / "empty_models"
    args = base + ["--models", str(empty), "-o", str(out), "--width", "64", "--height", "64", "-q", "--no-face-crop"]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "denoising_unet.pth" in err and "Downloading" in err and "network unreachable" in err and "BadToBest/EchoMimic" in err
    assert not out.exists()


@pytest.mark.slow
def test_low_vram_and_fp8_options_render_the_same_video_within_their_tolerance(tiny, speech, shared_data, tmp_path):
    from echomimic_lib.io.video_io import read_video

    def render(name, *flags):
        out = tmp_path / f"{name}.mp4"
        assert cli(["animate", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio", str(speech),
                    "--no-face-crop", "--length", "4", *flags] + _common(tiny, out)) == 0
        return read_video(out, with_audio=False).frames.astype(np.float32)

    base, low, fp8 = render("base"), render("low", "--low-vram"), render("fp8", "--fp8")
    assert base.shape == low.shape == fp8.shape == (4, 64, 64, 3)
    # streamed blocks: the same numbers up to float rounding (2e-6 before uint8 / H.264, which amplify a few flips)
    assert np.abs(low - base).mean() < 2.0
    assert 4.0 < np.abs(fp8 - base).mean() < 40  # fp8 weights change the output (~12 levels on tiny random weights)
