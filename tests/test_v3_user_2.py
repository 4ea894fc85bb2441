"""EchoMimicV3 flash-pro as a user of the official antgroup/echomimic_v3 code runs it (tiny random weights): each
stumble now a clear error or message naming the problem and the fix, said before any network loads."""
from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np

from echomimic_lib.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REF, SPEECH = DATA / "images" / "portrait_a.png", DATA / "audio" / "echomimic_en.wav"


def _tone(path: Path, seconds: float, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(x.tobytes())
    return path


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
