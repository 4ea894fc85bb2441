"""Long speech tracks read without holding them, the places the first pass left (tests/test_speech_one_pass.py):
the V3 trainer's validation clip keeps the start it uses (its loudness still the whole clip's), ``echomimic poses
--audio`` without ``--length`` muxes its preview's sound from the file a piece at a time, and every reader makes its
``TrackSummariser`` one way (``LazyTrackSummariser``). The outputs are the old ones: the same samples, the same
summaries, the same words."""
from __future__ import annotations

import math
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from tests.test_speech_memory import DATA, long_speech, write_wav

SHORT = [DATA / "audio" / "echomimicv2_woman.wav", DATA / "audio" / "echomimic_en.wav"]


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return long_speech(tmp_path_factory.mktemp("one_pass_2") / "long.wav")  # 130 s, 3 channels, 44.1 kHz: 69 MB


def _track_bytes(path) -> int:
    from echomimic_lib.io.audio_file import read_audio

    return read_audio(path)[0].nbytes


def _numpy_peak(fn):
    """(fn(), the peak of memory traced while it ran: numpy's arrays among it)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------------------------------ V3 trainer validation


def _prepare(audio, frames):
    from trainer.v3.config import V3Validation
    from trainer.v3.validation import prepare

    cfg = V3Validation(reference=str(DATA / "images" / "portrait_a.png"), audio=str(audio), frames=frames)
    return prepare(cfg, 64, 64, 49, "a person talking")


def _old_validation(path, frames):
    """What validation.prepare made of the speech before: the whole track read, downmixed, resampled, normalised."""
    from echomimic_lib.audio.wav2vec import prepare_samples, resample_16k
    from echomimic_lib.jobs.speech_input import read_speech

    wav, sr, raw = read_speech(path)
    mono = raw.samples.mean(axis=0).astype(np.float32)
    return wav, sr, prepare_samples(resample_16k(mono, raw.sample_rate), frames)


def test_validation_speech_is_the_old_whole_track_reads_bit_for_bit(tmp_path):
    t = np.arange(16000 * 5) / 16000
    tone = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)
    media = SHORT + [write_wav(tmp_path / "mono16k.wav", tone[None], 16000)]
    for path in media:
        for frames in (25, 81):
            v = _prepare(path, frames)
            wav, sr, samples = _old_validation(path, frames)
            assert v.frames == frames and v.sample_rate == sr, path.name
            assert v.samples_16k.dtype == samples.dtype and np.array_equal(v.samples_16k, samples), (path.name, frames)
            muxed = int(round(frames / 25 * sr))  # what Mp4Writer keeps under the clip
            assert v.wav.shape[1] >= muxed and np.array_equal(v.wav, wav[:, : v.wav.shape[1]]), (path.name, frames)
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match=r"validation.audio .*echomimicv2_woman.wav: 6\.\d\d s of speech, 201 frames "
                                          r"need 8\.04 s"):
        _prepare(SHORT[0], 201)


def test_validation_keeps_the_clips_start_not_the_whole_track(long_wav, monkeypatch):
    """130 s of 3-channel speech, loud only after 100 s, for a 25-frame (1 s) clip: its samples are the whole-track
    pipeline's (the loudness measured over all of it), while no array of the whole track is ever made."""
    import echomimic_lib.io.audio_file as audio_file

    _prepare(SHORT[0], 25)  # (the modules it imports the first time are no part of the peak)
    whole = _track_bytes(long_wav)
    kept, real_read = [], audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda *a, **k: kept.append(real_read(*a, **k)) or kept[-1])
    v, peak = _numpy_peak(lambda: _prepare(long_wav, 25))
    assert peak < whole / 4, (peak, whole)  # 11 MB (the reference image's among it); before: over 1.2 x the track
    sr = v.sample_rate
    assert [w.shape for w, _ in kept] == [(3, math.ceil(3.0 * sr))]  # the clip's second and 2 s more (was 130 s)
    assert v.wav.shape == (3, math.ceil(2.0 * sr))  # the sound muxed under the clip, and 1 s more
    monkeypatch.setattr(audio_file, "read_audio", real_read)
    _, _, samples = _old_validation(long_wav, 25)
    assert np.array_equal(v.samples_16k, samples)


def test_validation_refuses_bad_speech_with_the_old_words(tmp_path):
    from trainer.config import ConfigError

    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 12) / 16000)).astype(np.float32)
    bad = np.stack([x, x])
    bad[1, 11 * 16000] = np.inf
    for path, words in [(write_wav(tmp_path / "silent.wav", np.zeros((2, 16000 * 12), np.float32), 16000),
                         r"validation: the audio is silent \(peak level digital silence\).*audio .*silent.wav has no"),
                        (write_wav(tmp_path / "inf.wav", bad, 16000, float32=True),
                         r"validation: audio: 1 NaN/Inf samples \(first at 11.000 s\)"),
                        (write_wav(tmp_path / "tiny.wav", x[None, :200], 16000),
                         r"validation: audio .*tiny.wav: the audio is too short \(12 ms\)"),
                        (tmp_path / "missing.wav", r"validation: audio .*missing.wav: file not found")]:
        with pytest.raises(ConfigError, match=words):
            _prepare(path, 25)


# ------------------------------------------------------------------------------------- poses --audio, no --length


def _library(tmp_path):
    lib = tmp_path / "poses"
    if not lib.exists():
        shutil.copytree(DATA / "pose" / "01", lib / "01")
    return lib


def _plan(audio, tmp_path):
    from echomimic_lib.jobs.poses import PosesRequest, check

    return check(PosesRequest(output=str(tmp_path / "p.npz"), audio=str(audio), gesture_library=str(_library(tmp_path)),
                              preview=str(tmp_path / "p.mp4")))


def _muxed(monkeypatch, make, frames: int, path: Path, keep: bool = True):
    """The sound blocks an Mp4Writer made by ``make(path)`` gives the AAC encoder for ``frames`` tiny frames (with
    ``keep`` False only their shapes)."""
    import av

    seen, real = [], av.AudioFrame.from_ndarray
    monkeypatch.setattr(av.AudioFrame, "from_ndarray",
                        lambda a, *x, **k: seen.append(np.array(a) if keep else a.shape) or real(a, *x, **k))
    writer = make(path)
    try:
        for a in range(0, frames, 256):
            writer.write(np.zeros((min(256, frames - a), 16, 16, 3), np.uint8))
        writer.commit()
    finally:
        writer.abort()
        monkeypatch.setattr(av.AudioFrame, "from_ndarray", real)
    return seen


def test_the_poses_preview_muxes_the_same_sound_as_the_whole_track(tmp_path, monkeypatch):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_writer import Mp4Writer

    loud = np.full((3, 30000), 0.9, np.float32)  # 3 channels: downmixed, and the mix clips (1.54): scaled as before
    loud[:, ::7] = -0.8
    quiet = 0.1 * loud
    for path in SHORT + [write_wav(tmp_path / "loud3.wav", loud, 16000, float32=True),
                         write_wav(tmp_path / "quiet3.wav", quiet, 16000, float32=True)]:
        plan = _plan(path, tmp_path)
        assert not isinstance(plan.wav, np.ndarray)  # (was the whole track)
        wav, sr = read_audio(path)
        assert plan.sample_rate == sr and plan.wav.shape == (min(2, wav.shape[0]), wav.shape[1])
        new = _muxed(monkeypatch, lambda p: Mp4Writer(p, 24.0, plan.wav, plan.sample_rate), plan.num_frames, tmp_path / "n.mp4")
        old = _muxed(monkeypatch, lambda p: Mp4Writer(p, 24.0, wav, sr), plan.num_frames, tmp_path / "o.mp4")
        assert [b.shape for b in new] == [b.shape for b in old] and len(new) > 1, path.name
        for a, b in zip(new, old):
            assert a.dtype == b.dtype == np.float32 and a.flags.c_contiguous
            if wav.shape[0] <= 2:  # mono and stereo: the very samples
                assert np.array_equal(a, b), path.name
            else:  # a downmix, a piece at a time: equal up to float rounding
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        if path.name == "loud3.wav":
            assert max(float(np.abs(b).max()) for b in new) == pytest.approx(1.0, abs=1e-6)


def test_the_poses_preview_of_a_long_track_holds_a_piece_not_the_track(long_wav, tmp_path, monkeypatch):
    """``poses --audio`` (the video follows the audio: 130 s) with a preview: the checks and the preview's sound each
    hold a decoded piece of the track, not the track (before: read_speech held all 69 MB of it until the preview was
    written)."""
    from echomimic_lib.io.video_writer import Mp4Writer

    _plan(SHORT[0], tmp_path)  # (the modules it imports the first time are no part of the peak)
    plan, peak = _numpy_peak(lambda: _plan(long_wav, tmp_path))
    whole = _track_bytes(long_wav)
    assert peak < whole / 20, (peak, whole)
    assert plan.num_frames == 130 * 24 and plan.wav.shape == (2, 130 * 44100)
    shapes, peak = _numpy_peak(lambda: _muxed(monkeypatch, lambda p: Mp4Writer(p, 24.0, plan.wav, plan.sample_rate),
                                              plan.num_frames, tmp_path / "n.mp4", keep=False))
    assert peak < whole / 20, (peak, whole)
    assert sum(s[1] for s in shapes) == 130 * 44100 and max(s[1] for s in shapes) == 1024  # all of it, in AAC's blocks


def test_run_poses_writes_the_preview_with_the_speech(tmp_path):
    from echomimic_lib.io.video_io import probe
    from echomimic_lib.jobs.poses import PosesRequest, run_poses

    out = run_poses(PosesRequest(output=str(tmp_path / "p.npz"), audio=str(SHORT[0]), gesture_library=str(_library(tmp_path)),
                                 preview=str(tmp_path / "p.mp4"), width=64, height=64))
    info = probe(out["preview"])
    assert info["frames"] == out["frames"] and info["audio_seconds"] == pytest.approx(out["frames"] / 24.0, abs=0.05)


def test_the_whole_speech_summary_refuses_what_read_speech_refuses_with_its_words(tmp_path):
    from echomimic_lib.jobs.speech_input import read_speech, read_speech_summary

    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 12) / 16000)).astype(np.float32)
    bad = np.stack([x, x])
    bad[1, 11 * 16000] = np.nan
    (tmp_path / "folder.wav").mkdir()
    cases = [write_wav(tmp_path / "silent.wav", np.zeros((2, 16000 * 12), np.float32), 16000),
             write_wav(tmp_path / "nan.wav", bad, 16000, float32=True), write_wav(tmp_path / "tiny.wav", x[None, :200], 16000),
             write_wav(tmp_path / "empty.wav", np.zeros((1, 0), np.float32), 16000), tmp_path / "missing.wav",
             tmp_path / "folder.wav", DATA / "images" / "portrait_a.png"]
    for path in cases:
        with pytest.raises(EchoMimicError) as old:
            read_speech(path)
        with pytest.raises(EchoMimicError) as new:
            read_speech_summary(path)
        assert str(new.value) == str(old.value), path.name
    for path in SHORT:
        wav, sr, raw = read_speech(path)
        whole = read_speech_summary(path)
        assert (whole.sample_rate, whole.samples, whole.num_samples_16k) == (sr, wav.shape[1], raw.num_samples_16k)


# ---------------------------------------------------------------------------------- one way to make a summariser


def test_every_reader_makes_its_summariser_one_way_with_the_same_summaries(long_wav, monkeypatch):
    import echomimic_lib.audio.track as track
    from echomimic_lib.audio.track import TrackSummariser, read_mono_16k, summarise_track
    from echomimic_lib.io.audio_file import audio_blocks, read_audio
    from echomimic_lib.jobs.speech_input import read_speech, read_speech_summary
    from echomimic_lib.jobs.v3_speech import read_v3_speech

    made, real_init = [], track.LazyTrackSummariser.__init__
    monkeypatch.setattr(track.LazyTrackSummariser, "__init__", lambda self, **o: made.append(dict(o)) or real_init(self, **o))
    made_direct, real_ts = [], TrackSummariser.__init__

    def counted(self, *a, **k):
        made_direct.append(a)
        real_ts(self, *a, **k)

    monkeypatch.setattr(TrackSummariser, "__init__", counted)
    read_speech(long_wav, 25.0, 125)
    read_v3_speech(long_wav, 81)
    read_mono_16k(SHORT[0])
    read_speech_summary(SHORT[0])
    summarise_track(audio_blocks(SHORT[0]))
    assert [sorted(o) for o in made] == [[], ["mel", "on_16k"], ["mel", "on_16k"], ["mel"], []]
    assert len(made_direct) == len(made)  # each summariser made by a LazyTrackSummariser, at its first piece
    monkeypatch.setattr(TrackSummariser, "__init__", real_ts)
    for path in SHORT:  # the summaries are those of one TrackSummariser given the whole decoded track
        wav, sr = read_audio(path)
        for options in ({}, {"mel": False}):
            direct = TrackSummariser(sr, **options)
            direct.add(wav)
            assert summarise_track(audio_blocks(path), **options) == direct.summary(), (path.name, options)
