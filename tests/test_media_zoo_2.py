"""The odd media real users bring (continued from tests/test_media_zoo.py): a slideshow given to ``dub``."""
from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from tests._media import write_wav
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


def _slideshow(path: Path, n: int, every_ms: int) -> Path:
    """``n`` frames, one every ``every_ms`` milliseconds (a podcast's picture, a timelapse, a slideshow)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.codec_context.time_base = s.time_base = fractions.Fraction(1, 1000)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((96, 128, 3), i * 9, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * every_ms, fractions.Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


@pytest.mark.parametrize("every_ms,rate", [(1000, "1.11 frames a second"), (360_000, "0.00309 frames a second")],
                         ids=["one-a-second", "one-every-6-min"])
def test_dub_refuses_a_slideshow_before_any_weight(tmp_path, loads, capsys, shared_data, every_ms, rate):  # noqa: F811
    """The dub keeps the source's frame rate: 10 frames over 54 min were planned as 77760 generated frames (without
    --audio) for an output of 10 frames, the lips never seen moving."""
    from echomimic_lib.io.video_io import VideoFrames

    video = _slideshow(tmp_path / "podcast.mp4", 10, every_ms)
    assert VideoFrames(video).fps < 5
    wav = write_wav(tmp_path / "speech.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000))
    out = tmp_path / "out.mp4"
    for extra in (["--audio", str(wav)], []):
        rc = cli(["dub", "--video", str(video), *extra, "-o", str(out), "--offline", "--models", str(tmp_path),
                  "--mediapipe-model", str(shared_data / "mediapipe" / MP_MODEL)])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, err
        assert f"--video {video} runs at {rate} (a slideshow or timelapse" in err and "needs at least 5" in err, err
        assert loads == [] and not out.exists()


def test_a_steady_video_passes_the_rate_check():
    from echomimic_lib.jobs.dub_plan import check_source_rate

    for fps in (5.0, 12.0, 23.976, 240.0):
        check_source_rate(fps, "--video x.mp4")
