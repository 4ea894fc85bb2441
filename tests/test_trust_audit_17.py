"""Trust audit 17: what a damaged file, an odd server reply or a new user's mistake could do to the code added for
variable frame rate retiming, packed multi-channel audio, the one-pass speech checks and the queue's --retry-failed."""
from __future__ import annotations

import numpy as np
import pytest

av = pytest.importorskip("av")


def _cfr_video(path, frames: int = 4, fps: int = 25):
    c = av.open(str(path), "w")
    s = c.add_stream("libx264", rate=fps)
    s.width = s.height = 64
    s.pix_fmt = "yuv420p"
    for _ in range(frames):
        for pk in s.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
            c.mux(pk)
    for pk in s.encode():
        c.mux(pk)
    c.close()
    return path


def test_a_first_frame_without_timestamp_cannot_blow_the_clock_up_to_hours_of_ticks(tmp_path):
    """A first decoded frame without a timestamp, the others hours into the stream: the clock starts at 0, so the few
    frames were repeated for hours of ticks (endless work and memory for timestamps near 1e9 s), past the damaged-
    timestamp guard (at most MAX_TICKS_PER_FRAME ticks a frame, measured on the known times). The clock now starts
    at the first known time, 1 / fps after the frame without one."""
    from echomimic_lib.io.retime import MAX_TICKS_PER_FRAME, ClockedFrames, on_clock
    from echomimic_lib.io.video_io import VideoFrames

    video = VideoFrames(_cfr_video(tmp_path / "v.mp4"))
    decoded = [None, 1e4, 1e4 + 0.04, 1e4 + 1.0]  # (a 1 s pause: a variable rate by its own measure)
    placed = on_clock(video, "the source video", "test", decoded=decoded)
    if isinstance(placed, ClockedFrames):
        assert placed.estimated_frames <= MAX_TICKS_PER_FRAME * len(decoded)


@pytest.mark.parametrize("rate", [192000, 22000, 4000])
def test_speech_at_a_rate_aac_cannot_encode_is_muxed_not_a_raw_ffmpeg_error(tmp_path, rate):
    """A 192 kHz studio recording (or any rate AAC has no table for) reached the writer after the whole render and
    failed there with av's raw ArgumentError ('avcodec_open2("aac") returned 22'); its sound is now resampled to an
    AAC rate for the output (rates AAC takes are muxed as before)."""
    from echomimic_lib.io.video_writer import AAC_RATES, Mp4Writer

    out = tmp_path / "o.mp4"
    t = np.arange(rate * 2) / rate
    with Mp4Writer(out, 25, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None], rate) as w:
        w.write(np.zeros((25, 64, 64, 3), np.uint8))
        w.commit()
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.rate in AAC_RATES
        samples = sum(f.samples for f in c.decode(a))
    assert abs(samples - a.rate) <= 2048  # one second of frames: one second of sound (AAC's priming aside)


@pytest.mark.parametrize("entry", [{"status": {"status_str": "error", "messages": 5}},
                                   {"outputs": {"9": {"images": 5}}},
                                   {"outputs": {"9": {"gifs": True}}}])
def test_an_odd_history_entry_is_read_not_a_type_error(entry):
    """--resume --retry-failed asks /history about an earlier prompt (and --wait polls it): a reply whose messages or
    saved images are not lists raised a raw TypeError ('int' object is not iterable) out of the queue. They say
    nothing now, as a node output that is not an object: a failure is "see the ComfyUI log", no files are listed."""
    from echomimic_lib.jobs.queue_replies import outcome

    why, files = outcome("http://127.0.0.1:1", "p1", entry)
    assert files == []
    assert why == ("see the ComfyUI log" if "status" in entry else None)


def test_a_dropped_status_row_without_id_or_detail_gives_the_table_not_a_key_error(tmp_path):
    """finalize accepts a status row with a text status, seconds and (dropped) a reason; the end-of-run table then read
    its 'id' and 'detail' and raised a KeyError after the whole prepare run (a hand-edited or older status file)."""
    import json

    from trainer.data.prepare import finalize, summary_table

    status = tmp_path / "status"
    status.mkdir()
    (status / "b_000.json").write_text(json.dumps({"status": "dropped", "reason": "no_face", "seconds": 1.0}))
    table = summary_table(finalize(tmp_path))
    assert "b_000" in table and "no_face" in table


def test_a_server_address_with_a_broken_ipv6_bracket_is_named_not_a_value_error():
    """--server http://[::1 (a bracket left open) raised urllib's raw ValueError ('Invalid IPv6 URL') with a traceback
    from `echomimic queue`, one server or several."""
    from echomimic_lib.jobs.queue_client import check_server
    from echomimic_lib.jobs.queue_replies import QueueError

    with pytest.raises(QueueError, match=r"http://\[::1"):
        check_server("http://[::1")


@pytest.mark.parametrize("rate", [-16000, 10**9])
def test_a_sound_track_rate_no_recording_has_is_refused_before_any_frame(tmp_path, rate):
    """An AUDIO from another node pack with a negative or absurd sample rate was taken by the writer and failed at the
    first frame written, after the render, with av's raw error: now refused when the writer is made (before the run),
    and nothing is written."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.io.video_writer import Mp4Writer

    with pytest.raises(EchoMimicError, match="sample rate"):
        Mp4Writer(tmp_path / "o.mp4", 25, np.zeros((1, 100), np.float32), rate)
    assert list(tmp_path.iterdir()) == []


def test_a_run_entry_without_a_host_does_not_block_every_later_run(tmp_path):
    """A damaged or hand-edited state whose run entry has a pid and prefixes but no host was taken for a live run on
    another host (which cannot be asked), so every later run on those jobs was refused ("wait for that run to
    finish") with no run to wait for. An entry without a text host names no run, as one without a pid."""
    import json

    from echomimic_lib.jobs.queue_state import QueueState

    path = tmp_path / "s.json"
    path.write_text(json.dumps({"version": 2, "servers": {}, "runs": {"old": {"pid": 1, "prefixes": ["a/x"]}}}))
    book = QueueState(path)
    book.claim(["a/x"])  # not refused
    assert list(json.loads(path.read_text())["runs"]) == [book.run_id]
    book.release()
