"""Variable frame rate, what was left: a first frame without a timestamp before a stream that starts late.

The clock (:func:`echomimic_lib.io.retime.on_the_clock`) counted its ticks from the first frame's time, taken as 0 when
that frame had none: a stream whose next frame comes at 5 s repeated that first frame (and the next) for the five
seconds. Such a frame now comes one tick before the first frame with a timestamp, once."""
from __future__ import annotations

import logging

from echomimic_lib.io.retime import ClockedFrames, nearest_frames, on_clock, on_the_clock
from echomimic_lib.io.video_io import VideoFrames
from tests.test_vfr_retime import _nearest, _number, _painted

LATE = [5.0, 5.04, 5.08, 5.12]  # 25 fps, from 5 s on


def test_a_first_item_without_a_time_before_a_late_start_comes_once():
    timed = [(None, "a")] + list(zip(LATE, "bcde"))
    assert list(on_the_clock(timed, 25)) == ["a", "b", "c", "d", "e"]
    assert nearest_frames([None, *LATE], 25).tolist() == [0, 1, 2, 3, 4]


def test_several_items_without_a_time_come_one_a_tick_up_to_the_first_timed_one():
    timed = [(None, "a"), (None, "b")] + list(zip(LATE, "cdef"))
    assert list(on_the_clock(timed, 25)) == ["a", "b", "c", "d", "e", "f"]


def test_the_frames_after_it_are_still_placed_by_their_timestamps():
    """A late start with a pause after it: the untimed first frame sits one tick before 5 s, and the pause repeats the
    frame before it as the nearest-timestamp rule says (brute force on the same times)."""
    times = [5.0, 5.04, 5.24, 5.28]
    got = nearest_frames([None, *times], 25).tolist()
    assert got == _nearest([5.0 - 1 / 25, *times], 25) == [0, 1, 2, 2, 2, 3, 3, 3, 4]


def test_a_readers_tick_map_does_not_repeat_the_first_frame_for_the_offset(tmp_path, caplog):
    """dub's path: the count hands over the decoded timestamps, the first of them missing (None)."""
    ms = [0, 5000, 5040, 5080, 6080, 6120]  # the file's own; the count found none for frame 0
    path = _painted(tmp_path / "late.mkv", ms)
    decoded = [None] + [t / 1000 for t in ms[1:]]
    with caplog.at_level(logging.WARNING):
        video = on_clock(VideoFrames(path), "the source video", "in step with the sound", decoded=decoded)
    assert isinstance(video, ClockedFrames)
    numbers = video.frame_numbers().tolist()
    assert numbers[:4] == [0, 1, 2, 3] and numbers.count(0) == 1, numbers[:10]
    assert len(numbers) == video.count() == round((6.12 - 4.96) * video.fps) + 1
    assert [_number(f) for f in video.frames_from(0)][:4] == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ read_video
def test_read_video_places_a_variable_rate_videos_frames_as_the_other_readers_do(tmp_path, caplog):
    """``video_io.read_video`` (the whole video in memory) read frame after frame at the header's rate, unlike every
    other reader: now the same ticks as :class:`ClockedFrames`; a constant-rate video's frames as stored, bit for bit."""
    import numpy as np

    from echomimic_lib.io.video_io import read_video
    from tests.test_vfr_retime import PAUSED, STEADY, _decoded_times

    vfr = _painted(tmp_path / "vfr.mp4", PAUSED)
    with caplog.at_level(logging.WARNING):
        clip = read_video(vfr, with_audio=False)
    want = _nearest(_decoded_times(vfr), clip.fps)
    assert [_number(f) for f in clip.frames] == want and want != list(range(len(PAUSED)))
    assert [_number(f) for f in on_clock(VideoFrames(vfr), "v", "e")] == want
    assert "placed by their timestamps" in caplog.text
    cut = read_video(vfr, max_frames=60, with_audio=False)  # the first 60 frames decoded, on the clock
    assert [_number(f) for f in cut.frames] == want[:60]
    steady = _painted(tmp_path / "steady.mp4", STEADY)
    assert np.array_equal(read_video(steady, with_audio=False).frames, np.stack(list(VideoFrames(steady))))
