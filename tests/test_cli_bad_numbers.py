"""Numbers that stopped a run with a traceback, or went through unchecked, now refused first with the flag's range:
``animate --smoke --fps inf`` (the smoke length was computed from the fps before it was checked) and the EchoMimicV3
numbers (a NaN or negative --audio-cfg rendered, a negative --length or a side under 16 px raised after the weights
loaded). Nothing is read, loaded or written."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main as cli
from tests.test_cli_bad_input import loads  # noqa: F401  (fails any weight access)


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_smoke_fps_that_is_not_a_number_is_refused(value, shared_data, tmp_path, loads, capsys):  # noqa: F811
    out = tmp_path / "o.mp4"
    rc = cli(["animate", "--smoke", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio",
              str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "m"), "--fps", value])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and f"--fps {value}: the frame rate must be a number between 1 and 120" in err, err
    assert loads == [] and not out.exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("extra,words", [
    (["--audio-cfg", "nan"], ["--audio-cfg nan", "from 0 to 20"]),
    (["--audio-cfg", "-5"], ["--audio-cfg -5.0", "from 0 to 20"]),
    (["--seed", "-1"], ["--seed -1", "0 to 2^64-1"]),
    (["--length", "-3"], ["--length -3", "0 (follow the audio)"]),
    (["--width", "8"], ["--width 8", "at least 16 px"]),
    (["--steps", "-1"], ["--steps -1", "1..200"]),
])
def test_v3_numbers_are_checked_before_anything_is_read(extra, words, shared_data, tmp_path, monkeypatch, capsys):
    import echomimic_lib.jobs.speech_input as checks
    import echomimic_lib.jobs.animate_v3 as v3

    monkeypatch.setattr(checks, "read_speech", lambda *a, **k: pytest.fail("the audio was read before the numbers"))
    monkeypatch.setattr(v3, "model_files", lambda *a, **k: pytest.fail("weights looked up before the numbers"))
    out = tmp_path / "o.mp4"
    rc = cli(["animate", "--version", "v3-flash", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio",
              str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "m"), "--offline",
              *extra])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and all(w in err for w in words), err
    assert not out.exists() and list(tmp_path.iterdir()) == []
