"""Three small hints a user was given wrong:

1. ``echomimic v3 --help`` said argparse's "invalid choice: 'v3'": V3 (and V1 / V2) run as ``echomimic animate
   --version ...``, and now the unknown command says so (exit 2, one line and the usage; no new command).
2. A named pipe, a device or a folder given as ``--audio`` was "file not found" (the shared speech-file check): now it
   says what the path is and what to do, from ``stat`` alone (a pipe is never opened: that would hang).
3. ``echomimic-train fit``'s validation metrics said "pass --mediapipe-model", an option ``fit`` does not have: now the
   note names the trainer's config key and the models folder it looks in; ``echomimic evaluate`` keeps its wording.
"""
from __future__ import annotations

import logging
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from echomimic_lib.cli import main
from echomimic_lib.errors import EchoMimicError


# -- 1. a version given as the command -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, version", [
    (["v3", "--help"], "v3-flash"),
    (["v3-flash", "--reference", "a.png"], "v3-flash"),
    (["-v", "flash"], "v3-flash"),
    (["echomimic-v3"], "v3-flash"),
    (["V3"], "v3-flash"),
    (["v1", "--audio", "x.wav"], "v1"),
    (["v2"], "v2"),
])
def test_a_version_as_the_command_says_what_to_run(capsys, argv, version):
    assert main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    err = cap.err
    assert "invalid choice" not in err
    assert err.startswith("usage: echomimic")
    lines = [line for line in err.splitlines() if line.startswith("echomimic: error:")]
    assert len(lines) == 1, err
    assert f"echomimic animate --version {version}" in lines[0] and "echomimic animate --help" in lines[0]


def test_other_unknown_commands_keep_argparses_words(capsys):
    assert main(["render", "--help"]) == 2
    assert "invalid choice: 'render'" in capsys.readouterr().err
    # a version word after a real command is that command's business (here: doctor's own usage error)
    assert main(["doctor", "v3"]) == 2
    assert "echomimic animate --version" not in capsys.readouterr().err


# -- 2. a speech "file" that is not a regular file -------------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    p = tmp_path / "speech.wav"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("check", ["check_speech_file", "probe_speech"])
def test_a_named_pipe_as_the_speech_is_called_a_pipe(fifo, check):
    from echomimic_lib.jobs import speech_input

    with pytest.raises(EchoMimicError) as info:
        getattr(speech_input, check)(fifo)  # would hang here if the pipe were opened (nothing writes into it)
    msg = str(info.value)
    assert msg.startswith(f"--audio {fifo}: ")
    assert "file not found" not in msg and "named pipe" in msg and "save" in msg


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_a_device_as_the_speech_is_called_a_device():
    from echomimic_lib.jobs.speech_input import check_speech_file

    with pytest.raises(EchoMimicError, match=r"--audio /dev/null: is a device, not a regular file; give a speech recording"):
        check_speech_file("/dev/null")


def test_the_cli_names_the_pipe(fifo, tmp_path, capsys, shared_data):
    ref = shared_data / "images" / "portrait_a.png"
    for version in ("v1", "v3-flash"):
        rc = main(["animate", "--version", version, "--smoke", "--reference", str(ref), "--audio", str(fifo),
                   "-o", str(tmp_path / "out.mp4")])
        err = capsys.readouterr().err
        assert rc == 2 and f"--audio {fifo}: is a named pipe" in err and "file not found" not in err, err
    assert not (tmp_path / "out.mp4").exists()


def test_the_missing_and_folder_wording_stays(tmp_path):
    from echomimic_lib.jobs.speech_input import check_speech_file, probe_speech

    for check in (check_speech_file, probe_speech):
        with pytest.raises(EchoMimicError, match="file not found; give a speech recording"):
            check(tmp_path / "none.wav")
        with pytest.raises(EchoMimicError, match="is a folder; give a speech recording"):
            check(tmp_path)


# -- 3. the trainer's validation metrics without a MediaPipe model ---------------------------------------------------
class _Monitor:
    def __init__(self):
        self.rows = []

    def metrics(self, step, name, values):
        self.rows.append((step, name, values))


def test_the_trainers_landmark_note_names_what_the_trainer_reads(tmp_path, monkeypatch, caplog):
    from trainer.validation import log_quality_metrics

    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "models"))
    release = tmp_path / "release"
    release.mkdir()
    frames = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    cfg = SimpleNamespace(model=SimpleNamespace(echomimic_path=str(release)), data=SimpleNamespace(condition="landmarks"))
    mon = _Monitor()
    with caplog.at_level(logging.INFO, logger="trainer.validation"):
        log_quality_metrics(cfg, mon, 3, frames, np.zeros(8 * 16000 // 24, np.float32), SimpleNamespace(fps=24.0), (32, 32))
    lines = [r.getMessage() for r in caplog.records if r.name == "trainer.validation"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "--mediapipe-model" not in line and "one-time download" not in line
    assert "model.echomimic_path" in line and str(tmp_path / "models" / "mediapipe") in line
    assert str(release / "mediapipe") in line and "face_landmarker.task" in line
    assert mon.rows and "flicker" in mon.rows[0][2]


def test_evaluate_keeps_its_own_landmark_note():
    from echomimic_lib.evaluate import clip_from_arrays, evaluate

    frames = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    rep = evaluate(clip_from_arrays(frames, None, None, 24.0, source="x.mp4"), None, None)
    assert any("no face-landmark model" in n and "pass --mediapipe-model" in n for n in rep.notes), rep.notes


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_a_speech_path_with_a_nul_byte_is_named_not_a_traceback():
    """A NUL byte in the speech path (a manifest cell, an API prompt) was a ValueError from ``stat`` once the check
    looked at the file's kind: it is refused, naming the option."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.speech_input import check_speech_file

    with pytest.raises(EchoMimicError, match=r"--audio .*NUL byte"):
        check_speech_file("speech\x00.wav")
