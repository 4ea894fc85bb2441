"""read_audio(start=, duration=): the window of a whole decode, bit for bit, with decoding stopped once it is there."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io import audio_file
from echomimic_lib.io.audio_file import read_audio

AUDIO = sorted(Path("/work/shared/data/audio").glob("*.wav"))


def _encode(src: Path, dst: Path, codec: str, layout: str = "mono") -> Path:
    """``src`` re-encoded with ``codec`` (a compressed file: frames of 1024/1152 samples, encoder priming)."""
    wav, sr = read_audio(src)
    wav = wav[:1] if layout == "mono" else np.concatenate([wav[:1], wav[:1] * 0.5])
    with av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = layout
        for a in range(0, wav.shape[1], 4096):  # PyAV converts fltp to the encoder's format
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, a : a + 4096]), format="fltp", layout=layout)
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return dst


def _files(tmp: Path) -> list[Path]:
    src = AUDIO[0]
    return AUDIO + [_encode(src, tmp / "a.m4a", "aac", "stereo"), _encode(src, tmp / "a.mp3", "libmp3lame"),
                    _encode(src, tmp / "a.flac", "flac")]


@pytest.mark.parametrize("start,duration", [(0.0, 1.0), (0.37, 0.5), (1.0, 0.021), (2.5, None), (0.0, None)])
def test_window_equals_the_same_window_of_a_whole_decode(tmp_path, start, duration):
    assert AUDIO, "no test audio in /work/shared/data/audio"
    for path in _files(tmp_path):
        full, sr = read_audio(path)
        first = int(np.floor(start * sr + 1e-9))
        stop = full.shape[1] if duration is None else first + int(np.ceil(duration * sr - 1e-9))
        got, got_sr = read_audio(path, start=start, duration=duration)
        assert got_sr == sr and got.dtype == np.float32
        np.testing.assert_array_equal(got, full[:, first:stop], err_msg=str(path))


def test_window_past_the_end_is_cut_there_and_an_empty_one_named():
    full, sr = read_audio(AUDIO[0])
    seconds = full.shape[1] / sr
    got, _ = read_audio(AUDIO[0], start=seconds - 0.25, duration=10.0)
    np.testing.assert_array_equal(got, full[:, int(np.floor((seconds - 0.25) * sr + 1e-9)):])
    with pytest.raises(EchoMimicError, match="nothing is left from"):
        read_audio(AUDIO[0], start=seconds + 1.0, duration=1.0)
    with pytest.raises(EchoMimicError, match="start must be 0 or more"):
        read_audio(AUDIO[0], start=-1.0)


def test_decoding_stops_once_the_window_is_there(tmp_path, monkeypatch):
    """A 1 s window of a 60 s file decodes about a second of it, not the minute."""
    sr = 16000
    long = tmp_path / "long.flac"
    with av.open(str(long), "w") as out:
        stream = out.add_stream("flac", rate=sr)
        stream.layout = "mono"
        rng = np.random.default_rng(0)
        for _ in range(60):
            frame = av.AudioFrame.from_ndarray((rng.standard_normal((1, sr)) * 3000).astype(np.int16),
                                               format="s16", layout="mono")
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    decoded = []
    opened = audio_file._open

    class Counting:
        def __init__(self, container):
            self.c = container

        def __getattr__(self, name):
            return getattr(self.c, name)

        def decode(self, *a, **k):
            for frame in self.c.decode(*a, **k):
                decoded.append(frame.samples)
                yield frame

    monkeypatch.setattr(audio_file, "_open", lambda p: Counting(opened(p)))
    full, _ = read_audio(long)
    assert full.shape[1] == 60 * sr and sum(decoded) == 60 * sr
    decoded.clear()
    got, _ = read_audio(long, start=0.5, duration=1.0)
    np.testing.assert_array_equal(got, full[:, sr // 2 : sr // 2 + sr])
    assert 1.5 * sr <= sum(decoded) < 2 * sr  # the prefix up to the window's end (and one codec frame), not 60 s


def _mp4(path: Path, frames: int, fps: float, audio=None, sr=None) -> Path:
    from echomimic_lib.io.video_writer import Mp4Writer

    with Mp4Writer(path, fps, audio, sr) as w:
        w.write(np.full((frames, 16, 16, 3), 128, np.uint8))
        return w.commit()


def test_a_window_long_enough_muxes_the_same_sound_as_the_whole_track(tmp_path):
    """What the callers rely on: the writer keeps round(frames / fps * sr) samples, so a window of the first
    frames / fps + 1 s gives the same sound track as the whole file."""
    full, sr = read_audio(AUDIO[0])
    frames, fps = 30, 25.0
    window, _ = read_audio(AUDIO[0], duration=frames / fps + 1.0)
    assert window.shape[1] < full.shape[1]
    a = read_audio(_mp4(tmp_path / "full.mp4", frames, fps, full, sr))[0]
    b = read_audio(_mp4(tmp_path / "window.mp4", frames, fps, window, sr))[0]
    np.testing.assert_array_equal(a, b)


def test_dub_without_speech_and_with_length_decodes_the_sound_it_muxes_only(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from echomimic_lib.jobs import dub

    full, sr = read_audio(AUDIO[2])
    video = _mp4(tmp_path / "v.mp4", 100, 25.0, full, sr)  # 4 s with its sound
    whole = read_audio(video)[0]
    asked = []
    real = audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda p, **k: asked.append(k) or real(p, **k))
    audio, got_sr, seconds, frames, _ = dub._speech(SimpleNamespace(audio=None, length=25), str(video), 100, 25.0, 25.0,
                                                   True)
    assert asked == [{"duration": 2.0}] and seconds == 4.0 and frames == 100
    np.testing.assert_array_equal(audio, whole[:, : audio.shape[1]])
    assert audio.shape[1] == 2 * got_sr < whole.shape[1]
    asked.clear()
    audio, *_ = dub._speech(SimpleNamespace(audio=None, length=None), str(video), 100, 25.0, 25.0, True)
    assert asked == [{"duration": None}]
    np.testing.assert_array_equal(audio, whole)
    asked.clear()
    # a source whose header says it has no sound is not opened again for one
    audio, got_sr, *_ = dub._speech(SimpleNamespace(audio=None, length=None), str(video), 100, 25.0, 25.0, False)
    assert asked == [] and audio is None and got_sr is None


def test_poses_preview_audio_with_length_decodes_what_the_preview_keeps(monkeypatch):
    from echomimic_lib.jobs import poses

    video = "/work/shared/data/video/driving_a.mp4"  # 24 fps
    assert poses._preview_seconds(video, None, 0) is None
    assert poses._preview_seconds(video, None, 48) == pytest.approx(3.0)
    assert poses._preview_seconds(video, 12.0, 48) == pytest.approx(5.0)  # resampled: the slower rate bounds it
    full, sr = read_audio(AUDIO[2])
    got, _ = poses._read_preview_audio(AUDIO[2], 3.0)
    np.testing.assert_array_equal(got, full[:, : 3 * sr])
