"""Speech tracks without holding them whole: with ``--length`` (V1/V2 animate, batch rows) ``read_speech`` keeps only
the start the frames need and passes over the rest a piece at a time; the frames' whisper features and their muxed
sound are those of a whole read, bit for bit. V3 keeps the sound it muxes, not the whole track; the nodes' peak
check makes no |x| copy of a ComfyUI AUDIO. One length check says V1/V2's and V3's words."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError

DATA = Path("/work/shared/data")
SPEECH = DATA / "audio" / "echomimicv2_woman.wav"  # 44.1 kHz stereo, 6.2 s


def write_wav(path, samples: np.ndarray, sr: int, float32: bool = False) -> Path:
    """(C, T) samples as a 16-bit PCM (or 32-bit float) wav."""
    c, t = samples.shape
    if float32:
        data, fmt, width = samples.T.astype("<f4").tobytes(), 3, 4
    else:
        data, fmt, width = (np.clip(samples, -1, 1) * 32767).T.astype("<i2").tobytes(), 1, 2
    head = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, fmt, c, sr, sr * c * width,
                       c * width, 8 * width, b"data", len(data))
    Path(path).write_bytes(head + data)
    return Path(path)


def long_speech(path, seconds: float = 130.0, float32: bool = False) -> Path:
    """3 channels at 44.1 kHz: quiet speech with digital-silence gaps first, then normal, then loud speech after 100 s
    (the whole track's loudest log-mel frame lies far past any window, so the log-mel floor differs from a window's)."""
    from echomimic_lib.io.audio_file import read_audio

    talk, sr = read_audio(SPEECH)
    n = int(seconds * sr)
    base = np.tile(talk, (1, n // talk.shape[1] + 1))[:, :n]
    gain = np.where(np.arange(n) < 20 * sr, 0.02, np.where(np.arange(n) < 100 * sr, 0.3, 1.0)).astype(np.float32)
    gain[(np.arange(n) % (3 * sr)) < sr // 2] = 0.0  # half a second of digital silence every 3 s
    x = base * gain
    return write_wav(path, np.stack([x[0], x[1], 0.5 * x[0]]), sr, float32)


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    return long_speech(tmp_path_factory.mktemp("speech") / "long.wav")


@pytest.fixture(scope="module")
def whole(long_wav):
    from echomimic_lib.jobs.speech_input import read_speech

    return read_speech(long_wav)  # no frame rate: the whole track, as before


@pytest.fixture(scope="module")
def encoder():
    from echomimic_lib.audio.whisper import load_whisper_encoder
    from tests.parity_runners._common import parity_dir

    path = parity_dir() / "models" / "whisper_tiny_encoder.pt"
    if not path.is_file():
        pytest.skip(f"no whisper fixture at {path}")
    return load_whisper_encoder(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("fps, length", [(25.0, 125), (29.97, 1950)])  # 1 and 3 whisper segments (61 s, 121 s kept)
def test_a_long_tracks_start_gives_the_whole_tracks_features(long_wav, whole, encoder, fps, length, monkeypatch):
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.audio import encode_audio
    from echomimic_lib.audio.features import seconds_for_frames
    from echomimic_lib.audio.track import SpeechStart
    from echomimic_lib.jobs.speech_input import frame_count, read_speech

    asked, real = [], audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda p, *a, **k: asked.append(k.get("duration")) or real(p, *a, **k))
    wav, sr, raw = read_speech(long_wav, fps, length)
    wav_w, sr_w, raw_w = whole
    seconds = seconds_for_frames(length, fps)
    assert asked == [seconds] and seconds < 130  # only the start is decoded into memory
    assert isinstance(raw, SpeechStart) and wav.shape == (3, math.ceil(seconds * sr)) and sr == sr_w
    assert np.array_equal(wav, wav_w[:, : wav.shape[1]])
    assert raw.whole_samples == wav_w.shape[1]
    assert frame_count(raw, fps, length) == frame_count(raw_w, fps, length) == length
    want = encode_audio(wav_w, encoder, sr, frames=length, fps=fps).chunks(0, length, fps)
    got = encode_audio(wav, encoder, sr, frames=length, fps=fps, mel_peak=raw.mel_peak).chunks(0, length, fps)
    assert torch.equal(got, want)
    if length == 125:  # the whole track's log-mel maximum is what makes them equal
        alone = encode_audio(wav, encoder, sr, frames=length, fps=fps).chunks(0, length, fps)
        assert not torch.equal(alone, want)


def test_the_whole_tracks_log_mel_peak_and_16k_stream_come_out_the_same_piece_by_piece():
    from echomimic_lib.audio.mel import LogMelPeak, log_mel_spectrogram
    from echomimic_lib.audio.resample import StreamResampler, resample

    rng = np.random.default_rng(0)
    for n in (201, 360, 6000 * 160, 6000 * 160 + 40, 6000 * 160 + 41, 6000 * 160 + 200):  # one 60 s block, and just past
        wave = (rng.standard_normal(n) * np.linspace(1e-4, 0.5, n)).astype(np.float32)
        want = log_mel_spectrogram(torch.from_numpy(wave))
        for step in ((7, 97) if n < 1000 else (44100, n)):
            peak = LogMelPeak()
            for i in range(0, n, step):
                peak.add(wave[i : i + step])
            assert torch.equal(log_mel_spectrogram(torch.from_numpy(wave), peak=peak.value()), want)
    x = (rng.standard_normal(44100 * 7) * 0.1).astype(np.float32)
    stream = StreamResampler(44100)
    pieces = [stream(x[i : i + 4410]) for i in range(0, len(x), 4410)] + [stream(x[:0], last=True)]
    assert np.array_equal(np.concatenate(pieces), resample(x, 44100))


def test_the_muxed_sound_is_the_whole_reads(long_wav, whole, tmp_path):
    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_writer import Mp4Writer
    from echomimic_lib.jobs.speech_input import read_speech

    fps, length = 25.0, 125
    wav, sr, _ = read_speech(long_wav, fps, length)
    outs = []
    for name, audio in (("start", wav), ("whole", whole[0])):
        with Mp4Writer(tmp_path / f"{name}.mp4", fps, audio, sr) as writer:
            writer.write(np.zeros((length, 64, 64, 3), np.uint8))
            outs.append(read_audio(writer.commit())[0])
    assert outs[0].shape[1] > 4 * sr and np.array_equal(outs[0], outs[1])


def test_short_test_media_are_read_whole_as_before():
    from echomimic_lib.audio.waveform import RawAudio
    from echomimic_lib.jobs.speech_input import read_speech

    for path in sorted((DATA / "audio").glob("*.wav")):
        wav, sr, raw = read_speech(path, 25.0, 50)
        wav_w, sr_w, _ = read_speech(path)
        assert type(raw) is RawAudio and sr == sr_w and np.array_equal(wav, wav_w)


def test_what_lies_past_the_start_is_still_checked(tmp_path):
    from echomimic_lib.jobs.speech_input import read_speech

    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(16000 * 70) / 16000)).astype(np.float32)
    x[: 65 * 16000] = 0.0  # silent for the first 65 s: audible later, as a whole read says
    wav, _, raw = read_speech(write_wav(tmp_path / "late.wav", x[None], 16000), 25.0, 25)
    assert wav.shape[1] < x.size and raw.whole_samples == x.size
    silent = write_wav(tmp_path / "silent.wav", np.zeros((2, 16000 * 70), np.float32), 16000)
    bad = np.stack([x, x]).copy()
    bad[1, 66 * 16000 + 5] = np.nan  # past the start: the whole read refused it, so does this one
    bad[0, 68 * 16000] = np.inf
    nan = write_wav(tmp_path / "nan.wav", bad, 16000, float32=True)
    for path in (silent, nan):
        with pytest.raises(EchoMimicError) as whole_read:
            read_speech(path)
        with pytest.raises(EchoMimicError) as start:
            read_speech(path, 25.0, 25)
        assert str(start.value) == str(whole_read.value)
    assert "2 NaN/Inf samples (first at 68.000 s)" in str(start.value)


def test_a_batch_plan_keeps_the_whole_track_facts_of_a_start(long_wav):
    from echomimic_lib.jobs.batch.plan import PlanReads

    reads = PlanReads()
    first = reads.speech(long_wav, 25.0, 125)
    again = reads.speech(long_wav, 25.0, 125)  # from the memo: hollow samples, the same facts
    assert reads.reads == 1 and again[2].mel_peak == first[2].mel_peak is not None
    assert again[2].whole_samples == first[2].whole_samples and again[2].samples.shape == first[2].samples.shape


def test_v3_keeps_the_sound_it_muxes_not_the_whole_track(tmp_path):
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    x = 0.3 * np.sin(2 * np.pi * 200 * np.arange(44100 * 12) / 44100)
    wav = write_wav(tmp_path / "talk.wav", np.stack([x, 0.5 * x]), 44100)
    plan = plan_v3(V3Request(reference=str(DATA / "images" / "portrait_a.png"), audio=str(wav),
                             output=str(tmp_path / "o.mp4"), models=str(tmp_path), size=(64, 64), length=0))
    assert plan.frames == 81 and plan.wav.shape == (2, math.ceil((81 / 25 + 1) * 44100))
    assert plan.speech.samples == 44100 * 12  # the loudness is still the whole clip's (measured a piece at a time)
    assert plan.speech.head_16k.shape == (int(81 / 25 * 16000),)  # of its 16 kHz mono, only what the frames read


def test_v3_and_v1_length_checks_are_one_rule_with_each_ones_words(tmp_path, monkeypatch):
    from echomimic_lib.jobs import speech_length
    from echomimic_lib.jobs.speech_length import check_video_length

    with pytest.raises(EchoMimicError, match=r"longer than an EchoMimicV3 video can be \(40 frames, 0 min at 25 fps\); V3 "
                                             r"measures loudness over the whole clip, so --length does not shorten"):
        check_video_length("a.wav", 2.0, 25, 40, whole_clip=True)
    with pytest.raises(EchoMimicError, match=r"a.wav lasts 0 min: 50 frames at 25 fps, more than the 40 a video can have"):
        check_video_length("a.wav", 2.0, 25, 40)
    check_video_length("a.wav", 2.0, 25, 40, 1.5, whole_clip=True)  # within a header's margin
    import echomimic_lib.jobs.animate_v3 as v3
    import echomimic_lib.jobs.v3_plan as v3_plan  # (plan_v3 lives there)

    assert not hasattr(v3, "check_v3_speech_length") and not hasattr(v3_plan, "check_v3_speech_length")
    assert speech_length.MAX_LENGTH == 100_000


def test_the_peak_check_makes_no_copy_of_a_nodes_audio():
    import tracemalloc

    from echomimic_lib.audio import check_audible

    x = np.zeros((2, 4_000_000), np.float32)
    x[1, 7] = -0.5
    tracemalloc.start()
    check_audible(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes / 4  # np.abs(x) was a second (C, T) array
    check_audible(torch.from_numpy(x)[None])
    with pytest.raises(EchoMimicError, match="-100 dBFS"):
        check_audible(torch.full((1, 2, 5), -1e-5))


def test_the_decoded_start_is_bounded_whatever_the_tracks_length(long_wav, monkeypatch):
    """60 min or 130 s: a 5 s clip keeps seconds_for_frames (61 s) of samples; the rest is decoded a piece at a time."""
    import echomimic_lib.audio.track as track
    from echomimic_lib.jobs.speech_input import read_speech

    widest = []
    real = track.LogMelPeak.add
    monkeypatch.setattr(track.LogMelPeak, "add", lambda self, w: widest.append(len(self.buf)) or real(self, w))
    wav, sr, raw = read_speech(long_wav, 25.0, 125)
    assert wav.shape[1] == math.ceil(61.0 * sr) < raw.whole_samples
    assert max(widest) <= (6000 * 160 + 16000)  # at most one 60 s log-mel block of 16 kHz samples (and a piece)
    with av.open(str(long_wav)) as c:
        assert c.streams.audio[0].channels == 3
