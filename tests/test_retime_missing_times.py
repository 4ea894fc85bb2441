"""Retiming with timestamps handed over by the count (``on_clock(decoded=...)``, dub's path): a frame without a
timestamp is None in that list. The guard against damaged timestamps (a few frames hours apart) must name the span
of the known ones, not fail on the None with a TypeError."""
import logging

from echomimic_lib.io.retime import ClockedFrames, on_clock
from echomimic_lib.io.video_io import VideoFrames
from tests.test_vfr_retime import _painted


def test_damaged_timestamps_with_a_missing_one_are_read_as_stored(tmp_path, caplog):
    path = _painted(tmp_path / "gap.mkv", [0, 33, 66, 100, 10**13])
    decoded = [0.0, 0.033, None, 0.1, 1.0e10]  # (as count_frames lists them: None for a frame with no timestamp)
    with caplog.at_level(logging.WARNING):
        video = on_clock(VideoFrames(path), "the source video", "in step with the sound", decoded=decoded)
    assert not isinstance(video, ClockedFrames)
    assert "the timestamps of its 4 frames span 10000000000 s" in caplog.text, caplog.text


def test_a_missing_timestamp_among_a_pause_still_places_the_frames(tmp_path):
    path = _painted(tmp_path / "pause.mkv", [0, 40, 80, 1080, 1120])
    decoded = [0.0, 0.04, None, 1.08, 1.12]
    video = on_clock(VideoFrames(path), "the source video", "in step with the sound", decoded=decoded)
    assert isinstance(video, ClockedFrames) and video.count() > 5
