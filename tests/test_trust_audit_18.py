"""Trust audit 18 (b86fb50..66ec656): each test failed before its fix."""
from __future__ import annotations

import os
import threading

import pytest

from tests._pack import sub


def test_a_filename_prefix_no_file_name_can_hold_is_refused_before_the_render(tmp_path):
    C = sub("nodes.output_names")
    for prefix in ("clip\ud800", "sub/\ud800/clip"):  # (a workflow's JSON "\ud800": a lone surrogate)
        problem = C.prefix_problem(prefix, lambda: tmp_path)
        assert problem and "no file name" in problem and "type the name again" in problem, prefix
    assert C.prefix_problem("ok/clip", lambda: tmp_path) is None


def test_a_device_given_as_the_training_config_is_refused_not_read_forever():
    from trainer.config import ConfigError
    from trainer.config_checks import read_yaml_mapping

    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    with pytest.raises(ConfigError, match="a device or socket, not a config file"):  # (/dev/zero: read until memory ran out)
        read_yaml_mapping("/dev/null")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_an_endless_pipe_given_as_the_training_config_is_read_only_up_to_the_limit(tmp_path, monkeypatch):
    import trainer.config_checks as checks
    from trainer.config import ConfigError

    monkeypatch.setattr(checks, "MAX_CONFIG_BYTES", 1000)
    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb") as fh:
            try:
                fh.write(b"# a comment\n" * 1000)  # (`--config <(yes '#')`: endless)
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(ConfigError, match=r"over \d+ MiB is not a training config"):
        checks.read_yaml_mapping(fifo)
    writer.join(10)


@pytest.mark.parametrize("name", ["runs/a\x00b", "runs/a\ud800b"])  # (YAML "\0" / "\ud800")
def test_an_output_dir_no_folder_can_have_is_a_config_error_not_a_raw_value_error(name):
    from trainer.cli_checks import check_output_dir
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="a name no folder can have"):
        check_output_dir(name)


def test_a_lock_holder_pid_past_any_pid_is_said_not_an_overflow_error(tmp_path):
    """The lock file names its holder for the line a waiting run says; a damaged one (a pid past 2**31) made that
    line an OverflowError from os.kill, so the waiting run ended with a traceback."""
    import json

    from echomimic_lib.jobs.queue_lock import alive, held_by, host

    lock = tmp_path / "state.json.lock"
    lock.write_text(json.dumps({"pid": 2**40, "host": host(), "since": 0}))
    fd = os.open(lock, os.O_RDONLY)
    try:
        assert "waiting for the lock" in held_by(fd, lock)
    finally:
        os.close(fd)
    assert alive(2**40, host()) is False


def _wav(path, rate: int, seconds: float = 0.5):
    import wave

    import numpy as np

    t = np.arange(int(rate * seconds)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.sin(2 * np.pi * 220 * t) * 20000).astype("<i2").tobytes())
    return path


def test_speech_at_a_rate_no_video_takes_is_refused_before_the_weights_load(tmp_path):
    """A 1 MHz wav (a mislabelled header) passed every speech check and was refused by the writer, after the weights
    had loaded and the audio was encoded (about a minute with the tiny --smoke weights), with a fix for node users."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.speech_input import probe_speech, read_speech, read_speech_summary
    from echomimic_lib.jobs.v3_speech import read_v3_speech

    fast = _wav(tmp_path / "fast.wav", 1_000_000)
    for read in (probe_speech, lambda p: read_speech(p, 24.0), lambda p: read_speech(p, 24.0, 4), read_speech_summary,
                 lambda p: read_v3_speech(p, 100)):
        with pytest.raises(EchoMimicError, match=r"--audio .*fast.wav: its sample rate is 1000000 Hz.*resample it"):
            read(fast)
    assert read_speech(_wav(tmp_path / "ok.wav", 384_000), 24.0)[1] == 384_000  # (a real recorder's rate: kept)


def test_a_sample_rate_under_one_hertz_is_refused_not_the_sound_left_out(tmp_path):
    """0 < rate < 1 passed the writer's check (its words: 1 .. 768000 Hz), int() made it 0 and the video was written
    without its sound track, without a word."""
    import numpy as np

    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.io.video_writer import Mp4Writer

    with pytest.raises(EchoMimicError, match="sample rate 0.5 Hz"):
        Mp4Writer(tmp_path / "o.mp4", 25, np.full((1, 100), 0.3, np.float32), 0.5)
    assert list(tmp_path.iterdir()) == []
