"""Small media helpers shared by the tests."""
import wave
from pathlib import Path

import numpy as np


def write_wav(path, samples: np.ndarray, sr: int = 16000) -> Path:
    """Mono 16-bit PCM wav of ``samples`` (float, clipped to [-1, 1])."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)
