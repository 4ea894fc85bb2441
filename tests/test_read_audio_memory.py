"""``read_audio`` of a long recording peaks at about twice the decoded audio (the decoded chunks and the joined
array), not three times (an extra float32 copy of an array that already is float32)."""
import tracemalloc
import wave

import numpy as np

from echomimic_lib.io.audio_file import read_audio


def test_read_audio_peaks_at_about_twice_the_decoded_audio(tmp_path):
    sr, seconds = 48000, 60
    t = np.arange(sr * seconds) / sr
    pcm = (np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 12000).astype("<i2")
    path = tmp_path / "long.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    del pcm, t
    tracemalloc.start()
    try:
        audio, rate = read_audio(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rate == sr and audio.dtype == np.float32 and audio.shape == (2, sr * seconds)
    assert np.abs(audio[0, :sr]).max() > 0.3
    decoded = audio.nbytes  # 23 MB
    assert peak < 2.4 * decoded, (peak / decoded)
