"""Speech at a rate under 1 kHz (a damaged or mislabelled header; no speech fits under it, its highest tone being half
the rate) is refused before anything is resampled: every sample became 16 kHz / rate samples for the features, so a
40 KB wav "at 1 Hz" (5.5 hours) took minutes and gigabytes, and a ComfyUI AUDIO at sample_rate 1 could take the
server's memory."""
import numpy as np
import pytest

from echomimic_lib.audio.waveform import read_raw_audio
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.speech_input import probe_speech, read_speech, read_speech_summary
from tests.test_trust_audit_18 import _wav


def test_a_file_under_one_kilohertz_is_refused_by_the_speech_checks(tmp_path):
    slow = _wav(tmp_path / "slow.wav", 1, 4000)
    for read in (probe_speech, lambda p: read_speech(p, 24.0), lambda p: read_speech(p, 24.0, 4), read_speech_summary):
        with pytest.raises(EchoMimicError, match=r"--audio .*slow.wav: its sample rate is 1 Hz.*resample"):
            read(slow)
    assert read_speech(_wav(tmp_path / "phone.wav", 4000, 2.0), 24.0)[1] == 4000  # (a low real rate: kept)


def test_a_comfyui_audio_under_one_kilohertz_is_refused_before_it_is_resampled():
    audio = {"waveform": np.zeros((1, 1, 1000), np.float32), "sample_rate": 1}
    with pytest.raises(EchoMimicError, match=r"sample rate 1 Hz .*under the 1000 Hz"):
        read_raw_audio(audio)
    assert read_raw_audio({"waveform": np.zeros((1, 1, 4000), np.float32), "sample_rate": 4000}).sample_rate == 4000
