"""EchoMimic audio path: audio -> 16 kHz mono -> whisper log-mel -> whisper-tiny states -> per-frame chunks.

Typical use (ComfyUI AUDIO dict, tensor/array + sample rate, or a file path)::

    encoder = load_whisper_encoder("models/whisper_tiny.pt", device=device, dtype=dtype)
    feats = encode_audio({"waveform": wav, "sample_rate": 44100}, encoder)   # once per clip
    n = feats.frame_count(fps=24)                                              # video frames the clip yields
    window = feats.chunks_at([10, 11, 12, 13], fps=24)                         # (4, 50, 384) per window

Modules: :mod:`.waveform` (input checks), :mod:`.resample` (soxr), :mod:`.mel` (log-mel),
:mod:`.whisper` (checkpoint loading, the 5-state encoder, random test weights), :mod:`.features`.
"""
from .features import (
    AudioFeatures,
    audio_chunks,
    audio_frame_count,
    chunk_row_indices,
    encode_audio,
    encode_log_mel,
    frame_count_for_rows,
    num_feature_rows,
    rows_for_frames,
    segment_bounds,
    video_frame_count,
)
from .mel import log_mel_spectrogram, mel_filters
from .resample import resample, resampled_length
from .waveform import SILENCE_PEAK, check_audible, load_waveform_16k, read_raw_audio
from .whisper import (
    WhisperFeatureEncoder,
    build_whisper_encoder,
    load_whisper_encoder,
    random_whisper_encoder,
    random_whisper_state_dict,
    read_whisper_encoder_state,
    save_random_whisper,
)

__all__ = [
    "AudioFeatures",
    "SILENCE_PEAK",
    "WhisperFeatureEncoder",
    "audio_chunks",
    "audio_frame_count",
    "build_whisper_encoder",
    "check_audible",
    "chunk_row_indices",
    "encode_audio",
    "encode_log_mel",
    "frame_count_for_rows",
    "load_waveform_16k",
    "load_whisper_encoder",
    "log_mel_spectrogram",
    "mel_filters",
    "num_feature_rows",
    "random_whisper_encoder",
    "random_whisper_state_dict",
    "read_raw_audio",
    "read_whisper_encoder_state",
    "resample",
    "resampled_length",
    "rows_for_frames",
    "save_random_whisper",
    "segment_bounds",
    "video_frame_count",
]
