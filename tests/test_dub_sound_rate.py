"""``echomimic dub`` without ``--audio`` keeps the source video's own sound: a track at a rate no output video takes (a
mislabelled header) is refused while the dub is planned, as ``--audio`` is, not by the writer after the render."""
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.dub import DubRequest, _speech
from tests.test_trust_audit_18 import _wav


def test_the_source_sound_at_a_rate_no_video_takes_is_refused_while_planning(tmp_path):
    fast = _wav(tmp_path / "clip_sound.wav", 1_000_000)  # (the source's sound track, as read_audio reads any container)
    req = DubRequest(video=str(fast), audio=None, output=str(tmp_path / "out.mp4"))
    with pytest.raises(EchoMimicError, match=r"--video .*clip_sound.wav: its sample rate is 1000000 Hz.*resample"):
        _speech(req, str(fast), 12, 25.0, 25.0, True)
    ok = _wav(tmp_path / "ok.wav", 48_000)
    audio, sr, seconds, frames, _ = _speech(DubRequest(video=str(ok), audio=None, output="o.mp4"), str(ok), 12, 25.0,
                                            25.0, True)
    assert sr == 48_000 and audio.shape[-1] == 24_000 and frames == 12
