"""``echomimic dub`` in bounded memory: the source is decoded frame by frame (once to track the face, once to composite),
each output frame reaches the MP4 writer as soon as it is composited, and no array of the whole clip is ever made; the
frames and the sound handed to the encoder are those of the whole-clip path (read the video, plan, composite in memory)."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import read_video
from tests._media import write_wav
from tests.test_dub import _source_video

TINY = dict(width=64, height=64, steps=1, cfg=1.0, context_frames=24, context_overlap=0, download=False)


def _speech(tmp_path, shared, seconds):
    wav, sr = read_audio(shared / "audio" / "echomimic_en.wav")
    return write_wav(tmp_path / "speech.wav", wav[0, : int(seconds * sr)], sr)


def _record(monkeypatch, size):
    """Record pass 2's decodes, the writer's calls, and any allocation of many source-size frames."""
    from echomimic_lib.io.video_writer import Mp4Writer
    from echomimic_lib.jobs import dub, dub_stream

    w, h = size
    seen = {"events": [], "writes": [], "big": [], "audio": [], "job": None, "gen": None}
    frames_of = dub.DubJob.frames

    def frames(self, upto=None):
        for i, frame in enumerate(frames_of(self, upto)):
            seen["events"].append(("decode", i))
            yield frame

    write, init = Mp4Writer.write, Mp4Writer.__init__

    def recording_write(self, batch):
        seen["writes"].append(np.array(batch))
        seen["events"].append(("write", len(seen["writes"]) - 1))
        return write(self, batch)

    def recording_init(self, path, fps, audio=None, sample_rate=None, crf=18, **kw):
        seen["audio"].append((audio, sample_rate, fps))
        init(self, path, fps, audio, sample_rate, crf, **kw)

    prepare, composite = dub.prepare_dub, dub_stream.composite_frames

    def keep_job(req, *checked):
        seen["job"] = prepare(req, *checked)
        return seen["job"]

    def keep_generated(plan, schedule, generated, *a, **k):
        seen["gen"] = np.array(generated)
        return composite(plan, schedule, generated, *a, **k)

    def spy(name):
        real = getattr(np, name)

        def wrapped(arg, *a, **k):
            if name == "stack" and isinstance(arg, (list, tuple)) and arg:
                shape = (len(arg),) + tuple(np.shape(arg[0]))
            else:
                shape = tuple(arg) if name == "empty" and isinstance(arg, (list, tuple)) else ()
            if len(shape) == 4 and shape[1:] == (h, w, 3) and shape[0] > 4:
                seen["big"].append((name, shape[0]))
            return real(arg, *a, **k)
        monkeypatch.setattr(np, name, wrapped)

    monkeypatch.setattr(dub.DubJob, "frames", frames)
    monkeypatch.setattr(Mp4Writer, "write", recording_write)
    monkeypatch.setattr(Mp4Writer, "__init__", recording_init)
    monkeypatch.setattr(dub, "prepare_dub", keep_job)
    monkeypatch.setattr(dub_stream, "composite_frames", keep_generated)
    spy("stack"), spy("empty")
    return seen


def _whole_clip_frames(req, job, gen):
    """The frames the old whole-clip path composites: the video read into one array, planned and pasted in memory."""
    from echomimic_lib.frames.composite import PasteBack
    from echomimic_lib.jobs.dub import composite_dub
    from echomimic_lib.jobs.dub_plan import plan_dub, reference_crop

    clip = read_video(req.video, with_audio=False)
    n_out = len(job.plan.schedule.source)
    plan = plan_dub(clip.frames, clip.fps, job.n_model, job.checked.settings.fps, n_out, (req.width, req.height),
                    req.retime, req.reference_frame, parts=job.checked.parts, model_path=job.checked.mediapipe_model)
    for key in ("driving", "source", "generated"):
        assert np.array_equal(getattr(plan.schedule, key), getattr(job.plan.schedule, key))
    assert np.array_equal(plan.track.pixels, job.plan.track.pixels) and plan.geometry.box == job.plan.geometry.box
    assert plan.reference_frame == job.plan.reference_frame
    assert np.array_equal(reference_crop(plan, clip.frames), job.reference)
    schedule = plan.schedule.for_generated(len(gen))
    paster = PasteBack(plan.geometry, req.region, req.feather, req.dilation, req.color)
    return composite_dub(plan, schedule, gen, clip.frames, paster)[0]


def test_dub_streams_each_output_frame_to_the_writer_and_matches_the_whole_clip_path(tiny_comfy_models, shared_data,
                                                                                    tmp_path, monkeypatch):
    from echomimic_lib.jobs.dub import DubRequest, run_dub
    from echomimic_lib.jobs.speech_input import read_speech

    speech = _speech(tmp_path, shared_data, 1.0)
    req = DubRequest(video=str(shared_data / "video" / "driving_a.mp4"), audio=str(speech), output=str(tmp_path / "o.mp4"),
                     models=str(tiny_comfy_models / "echomimic"), **TINY)
    seen = _record(monkeypatch, (512, 512))
    summary = run_dub(req)
    monkeypatch.undo()
    assert summary["frames"] == 24 and (tmp_path / "o.mp4").is_file()
    assert not list(tmp_path.glob(".*"))  # the crops' temporary file is gone
    # streaming: one frame per writer call, the first written before pass 2 decodes its last source frame
    assert [w.shape for w in seen["writes"]] == [(1, 512, 512, 3)] * 24
    ev = seen["events"]
    assert ev.index(("write", 0)) < ev.index(("decode", 23))
    assert seen["big"] == []  # no (n, H, W, 3) array of source-size frames was stacked or allocated
    # the same frames and sound as the whole-clip path
    expected = _whole_clip_frames(req, seen["job"], seen["gen"])
    assert np.array_equal(np.concatenate(seen["writes"]), expected)
    (audio, sr, fps), = seen["audio"]
    wav, want_sr, _ = read_speech(str(speech))
    assert sr == want_sr and fps == 24.0 and np.array_equal(audio, wav)


def test_a_ping_pong_dub_through_a_small_window_matches_the_whole_clip_path(tiny_comfy_models, shared_data, tmp_path,
                                                                            monkeypatch):
    """8 source frames (two without a face) ping-ponged to 14 output frames, with room for 3 decoded frames: jumps back
    decode again, the frames stay those of the whole-clip path (faceless ones copied bit for bit)."""
    from echomimic_lib.jobs import dub_stream
    from echomimic_lib.jobs.dub import DubRequest, run_dub

    video = _source_video(tmp_path / "person.mp4", shared_data)
    req = DubRequest(video=str(video), audio=str(_speech(tmp_path, shared_data, 0.6)), output=str(tmp_path / "o.mp4"),
                     models=str(tiny_comfy_models / "echomimic"), **dict(TINY, context_frames=16))
    monkeypatch.setattr(dub_stream, "WINDOW_BYTES", 3 * 357 * 331 * 3)
    seen = _record(monkeypatch, (357, 331))
    assert run_dub(req)["frames"] == 14
    monkeypatch.undo()
    decodes = [i for kind, i in seen["events"] if kind == "decode"]
    assert len(decodes) > 8 and decodes.count(0) > 1  # 0..7 and back: decoded again from the start
    assert seen["big"] == []
    got = np.concatenate(seen["writes"])
    expected = _whole_clip_frames(req, seen["job"], seen["gen"])
    assert np.array_equal(got, expected)
    src = read_video(video, with_audio=False).frames
    for j in np.flatnonzero(np.isin(seen["job"].plan.schedule.source, [3, 4])):
        assert np.array_equal(got[j], src[seen["job"].plan.schedule.source[j]])


@pytest.mark.parametrize("capacity", [2, 3, 5, 100])
def test_source_window_serves_any_order_and_holds_at_most_its_capacity(capacity):
    from echomimic_lib.jobs.dub_stream import SourceWindow
    from echomimic_lib.retime import retime_indices

    frames = np.random.default_rng(0).integers(0, 255, (9, 4, 5, 3), dtype=np.uint8)
    opened = []

    def open_frames(upto):
        opened.append(upto)
        return iter(list(frames[:upto]))

    order = np.concatenate([retime_indices(9, 40, "ping-pong"), retime_indices(9, 20, "loop"), [8, 8, 0]])
    win = SourceWindow(open_frames, 9, capacity)
    for i in order:
        assert np.array_equal(win.get(i), frames[i])
        assert len(win.frames) <= capacity
    if capacity >= 9:
        assert opened == [9] and win.decoded == 9  # the whole (short) video fits: decoded once
    else:
        assert len(opened) > 1
    win.close()
    with pytest.raises(Exception, match="outside the frames read"):
        win.get(9)


def test_generated_crops_live_in_a_tracked_temporary_file_beside_the_output_that_always_goes(tmp_path):
    import torch

    from echomimic_lib.io import file_safety
    from echomimic_lib.jobs.dub_stream import GeneratedCrops

    with pytest.raises(RuntimeError, match="stopped"):
        with GeneratedCrops(5, (8, 6), tmp_path / "out.mp4") as crops:
            assert crops.path.parent == tmp_path and crops.path in file_safety._PENDING  # an interrupt removes it
            crops(0, torch.full((2, 6, 8, 3), 0.5))
            crops(2, np.ones((1, 6, 8, 3), np.uint8))
            assert crops.frames.shape == (3, 6, 8, 3) and (crops.frames[:2] == 128).all() and (crops.frames[2] == 1).all()
            with pytest.raises(Exception, match="6 frames where 5 were planned"):
                crops(3, np.zeros((3, 6, 8, 3), np.uint8))
            path = crops.path
            raise RuntimeError("stopped")
    assert not path.exists() and path not in file_safety._PENDING and list(tmp_path.iterdir()) == []
