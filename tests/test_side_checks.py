"""--width / --height mean the same in every command: one rule (``animate_checks.check_side``), one wording."""
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.animate_checks import SIZE_RANGE, check_side


@pytest.mark.parametrize("value", [64, 512, 768, 2048, "512", 512.0, np.int64(256)])
def test_good_sides_pass_as_ints(value):
    out = check_side(value, "--width")
    assert out == int(float(value)) and type(out) is int


@pytest.mark.parametrize("value, words", [
    (60, ["--width 60", "multiple of 8", "try --width 64."]),
    (100, ["--width 100", "multiple of 8", "try --width 96 or 104"]),
    (1, ["--width 1", "multiple of 8", "try --width 64"]),
    (0, ["--width 0", "at least 64"]),
    (-8, ["--width -8", "at least 64"]),
    (2056, ["--width 2056", "at most 2048"]),
    (512.5, ["--width 512.5", "whole number"]),
    ("wide", ["--width must be a number", "'wide'"]),
    (float("nan"), ["--width must be a finite number"]),
])
def test_bad_sides_name_the_flag_and_the_fix(value, words):
    with pytest.raises(EchoMimicError) as err:
        check_side(value, "--width")
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_animate_leaves_the_upper_bound_to_its_memory_message():
    assert check_side(4096, "--height", limit=False) == 4096
    assert SIZE_RANGE == (64, 2048)


def test_every_command_gives_the_same_answer(tmp_path, capsys, shared_data):
    """animate, landmarks and poses refuse --width 60 with the same sentence, before reading any weights."""
    from echomimic_lib.cli import main as cli

    video = sorted((shared_data / "video").glob("*.mp4"))[0]
    audio = sorted((shared_data / "audio").glob("*.wav"))[0]
    image = sorted((shared_data / "images").glob("*.png"))[0]
    runs = {
        "animate": ["animate", "--reference", str(image), "--audio", str(audio), "-o", str(tmp_path / "a.mp4"),
                    "--models", str(tmp_path / "none"), "--width", "60"],
        "landmarks": ["landmarks", str(video), "-o", str(tmp_path / "l.npz"), "--preview", str(tmp_path / "p.mp4"),
                      "--width", "60", "--offline", "--models", str(tmp_path / "none")],
        "poses": ["poses", "--video", str(video), "-o", str(tmp_path / "p.npz"), "--preview", str(tmp_path / "q.mp4"),
                  "--width", "60", "--offline", "--models", str(tmp_path / "none")],
    }
    sentences = {}
    for name, args in runs.items():
        assert cli(args) == 2, name
        err = capsys.readouterr().err
        line = next((ln for ln in err.splitlines() if "--width 60" in ln), None)
        assert line is not None, (name, err)
        sentences[name] = line[line.index("--width 60"):]
    assert len(set(sentences.values())) == 1, sentences
    assert sentences["animate"].endswith("try --width 64.")
    assert not list(tmp_path.iterdir())  # nothing written


def test_audio_file_is_not_a_driving_video(tmp_path, capsys, shared_data):
    """A file with sound only is named as such (by its stream, not by an error's wording)."""
    from echomimic_lib.cli import main as cli
    from echomimic_lib.io.video_io import NoVideoStream, count_frames

    audio = sorted((shared_data / "audio").glob("*.wav"))[0]
    with pytest.raises(NoVideoStream):
        count_frames(audio, 1)
    assert cli(["landmarks", str(audio), "-o", str(tmp_path / "l.npz"), "--offline"]) == 2
    assert "no video frames (an audio file?)" in capsys.readouterr().err
