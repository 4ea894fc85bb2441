"""``probe`` measures the audio without holding it: a PCM wav's length from its header (when the file is long enough
to hold what the header says), any other file by decoding frame by frame and counting. The result is the one of a
whole decode (``read_audio(path)[0].shape[1] / sr``, what ``probe`` used to do) on the shared media and on generated
files of every common codec, a truncated wav included."""
import tracemalloc
import wave
from pathlib import Path

import av
import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io import audio_file
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe

DATA = Path("/work/shared/data")
SHARED = sorted(p for p in (DATA / "audio").glob("*")) + sorted((DATA / "video").glob("*.mp4"))


def _old_seconds(path):
    """What probe measured before: the whole audio decoded and held."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
    wav, sr = read_audio(path)
    return wav.shape[1] / sr


def _wav(path, seconds=60, sr=48000):
    t = np.arange(int(sr * seconds)) / sr
    pcm = (np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 12000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return path


def _encoded(path, codec, seconds=2.3, sr=44100, video=False):
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        if video:
            vs = out.add_stream("libx264", rate=25)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream(codec, rate=sr)
        stream.layout = "stereo"
        formats = [f.name for f in stream.codec_context.codec.audio_formats]
        fmt = next(f for f in ("fltp", "flt", "s16p", "s16") if f in formats)
        block = 1000
        for i in range(int(seconds * sr) // block):
            data = (rng.standard_normal((2, block)) * 0.1).astype(np.float32)
            if fmt in ("s16", "s16p"):
                data = (data * 30000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(data.T.reshape(1, -1) if not fmt.endswith("p") else data, format=fmt,
                                               layout="stereo")
            frame.sample_rate, frame.pts = sr, i * block
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if video:
            for i in range(int(seconds * 25)):
                img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5 % 255, np.uint8), format="rgb24")
                for packet in vs.encode(img):
                    out.mux(packet)
            for packet in vs.encode(None):
                out.mux(packet)
    return path


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_probe_equals_the_whole_decode_on_the_shared_media(path):
    assert probe(path)["audio_seconds"] == _old_seconds(path)


@pytest.mark.parametrize("name, codec, video", [("a.m4a", "aac", False), ("a.mp3", "libmp3lame", False),
                                                 ("a.flac", "flac", False), ("a.ogg", "libopus", False),
                                                 ("av.mp4", "aac", True), ("a.mov", "pcm_s16le", False)])
def test_probe_equals_the_whole_decode_on_every_codec(tmp_path, name, codec, video):
    path = _encoded(tmp_path / name, codec, sr=48000 if codec == "libopus" else 44100, video=video)
    assert probe(path)["audio_seconds"] == _old_seconds(path)


def test_a_truncated_wav_is_counted_not_taken_from_its_header(tmp_path):
    path = _wav(tmp_path / "whole.wav", seconds=2)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:-12345])  # the header still says 2 s
    old = _old_seconds(cut)
    assert old < 2.0
    assert probe(cut)["audio_seconds"] == old
    assert probe(path)["audio_seconds"] == _old_seconds(path) == 2.0


def _no_whole_decode(*args, **kwargs):
    raise AssertionError("probe asked for the whole audio as an array")


@pytest.mark.parametrize("name", ["long.wav", "long.m4a"])
def test_probe_does_not_hold_the_audio(tmp_path, monkeypatch, name):
    path = _wav(tmp_path / name, seconds=60) if name.endswith(".wav") else _encoded(tmp_path / name, "aac", seconds=60)
    expected = _old_seconds(path)
    decoded_bytes = int(round(expected * (48000 if name.endswith(".wav") else 44100))) * 2 * 4  # float32 stereo
    monkeypatch.setattr(audio_file, "read_audio", _no_whole_decode)
    tracemalloc.start()
    try:
        info = probe(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info["audio_seconds"] == expected
    assert peak < decoded_bytes / 20, (peak, decoded_bytes)  # the whole decode peaked at about twice decoded_bytes


def test_audio_samples_errors(tmp_path):
    from echomimic_lib.io.audio_length import audio_samples

    silent = _encoded(tmp_path / "v.mp4", "aac", seconds=1, video=True)
    assert audio_samples(silent)[1] == 44100
    img = tmp_path / "still.mp4"
    import av

    with av.open(str(img), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        for packet in vs.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
            out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    assert probe(img)["audio_seconds"] is None
    with pytest.raises(EchoMimicError, match="no audio stream"):
        audio_samples(img)
