"""`--length` and the video length rule at the library level: only the 30-s whisper segments that the
needed frames read are encoded, with exactly the features of a whole-clip encoding; and a video that
follows its audio has floor(seconds x fps) frames (the reference makes about two more)."""
import numpy as np
import pytest
import torch

from echomimic_lib.audio import (encode_audio, frame_count_for_rows, num_feature_rows, random_whisper_encoder,
                                 rows_for_frames, video_frame_count)
from echomimic_lib.audio.mel import num_mel_frames
from echomimic_lib.errors import EchoMimicError


@pytest.mark.parametrize("seconds,fps,frames", [(0.5, 24, 12), (1.0, 30, 30), (1.2, 24, 28), (2.0, 29.97, 59), (0.02, 24, 1),
                                                (10.0, 25, 250), (1 / 24 * 7, 24, 7)])
def test_video_frame_count_is_floor_of_seconds_times_fps(seconds, fps, frames):
    n16 = round(seconds * 16000)
    assert video_frame_count(n16, fps) == frames
    chunks = frame_count_for_rows(num_feature_rows(num_mel_frames(n16)), fps)  # the reference's count
    assert chunks >= frames and (seconds < 0.1 or chunks - frames in (1, 2, 3))


class CountingEncoder(torch.nn.Module):
    """The random whisper-tiny encoder, counting its 30-s segment calls."""

    def __init__(self):
        super().__init__()
        self.inner = random_whisper_encoder(seed=3)
        self.encoder, self.calls = self.inner.encoder, 0

    @property
    def device(self):
        return self.inner.device

    def forward(self, mel):
        self.calls += 1
        return self.inner(mel)


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(0)
    t = np.arange(int(41.3 * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(t)) * t) * (0.5 + 0.5 * np.sin(3 * t)) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def encoder():
    return CountingEncoder()


@pytest.fixture(scope="module")
def whole(clip, encoder):
    encoder.calls = 0
    feats = encode_audio(clip, encoder, 16000)
    assert encoder.calls == 2  # 41.3 s: two segments
    return feats


def test_a_frame_limit_encodes_only_the_segments_it_reads_with_identical_features(clip, whole, encoder):
    frames = 700  # frame 699 reads rows up to 1461: the first 30-s segment (rows 0..1499) is enough
    assert rows_for_frames(frames, 24) == 1462 and rows_for_frames(720, 24) == 1503  # frame 719 would need segment 2
    encoder.calls = 0
    part = encode_audio(clip, encoder, 16000, frames=frames, fps=24)
    assert encoder.calls == 1 and part.encoded_rows == 1500 < whole.encoded_rows == whole.num_rows
    # frame counts and row clamping follow the whole clip
    assert part.num_rows == whole.num_rows and part.frame_count(24) == whole.frame_count(24)
    assert part.video_frame_count(24) == whole.video_frame_count(24) == int(41.3 * 24)
    idx = list(range(frames))
    assert torch.equal(part.chunks_at(idx, 24), whole.chunks_at(idx, 24))
    assert torch.equal(part.chunks_at([3, 699, 0], 24), whole.chunks_at([3, 699, 0], 24))
    with pytest.raises(EchoMimicError, match="encoded for the first 1500 rows only"):
        part.chunks_at([900], 24)  # row 1875 was never encoded: refused, not silently clamped
