"""A ComfyUI graph builder's walk, day 5: an AUDIO at an absurd sample rate (1 GHz: a damaged header, or the rate in mHz)
was refused as "audio is too short" by the encoders, and Save Dub took a NaN rate as "cannot convert float NaN to integer";
an unknown COMBO value (an edited workflow JSON, the HTTP API with validation skipped, an older workflow) reached the
node, where it was ignored or failed deep inside: every node now refuses it first, naming the allowed values."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from tests._pack import sub

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


class Reached(Exception):
    """Raised where the expensive work would start: every check before it passed."""


def _reached(*a, **k):
    raise Reached


def _speech(rate=16000):
    wave = torch.sin(torch.arange(16000) / 16000 * 2 * math.pi * 220).mul(0.3).reshape(1, 1, -1)
    return {"waveform": wave, "sample_rate": rate}


# ------------------------------------------------------------------------------------------ 1. absurd sample rates
HIGH = [10**9, 5_000_000]
BAD = HIGH + [0, -1, math.nan, math.inf]


def _rate_runs(monkeypatch, tmp_path):
    audio_node, v3, gestures = sub("nodes.audio"), sub("nodes.v3"), sub("nodes.gestures")
    monkeypatch.setattr(audio_node, "placement", _reached)
    monkeypatch.setattr(gestures, "library_paths", lambda library: [])
    monkeypatch.setattr(gestures, "load_library", _reached)
    C = sub("nodes.comfy_bridge")
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "out")
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    v3_handle = v3.V3Handle(patcher=None, wav2vec=None, report="")
    save_dub = sub("nodes.save_dub")
    monkeypatch.setattr(save_dub, "source_color", lambda video: None)
    monkeypatch.setattr(save_dub, "describe_source", lambda *a: None)
    return {
        "Audio Encoder": lambda a: audio_node.encode(handle, a, 24.0),
        "V3 Audio Encoder": lambda a: v3.EchoMimicV3AudioEncoder().execute(v3_handle, a, 81),
        "Gestures from Audio": lambda a: gestures.generate("all pose folders", 0, 1.0, 24.0, 0.5, "none", False, audio=a),
        "Save Dub": lambda a: save_dub.save_dub(torch.rand(2, 64, 64, 3), 24.0, "src.mp4", "echomimic/dub", a),
    }


@pytest.mark.parametrize("node", ["Audio Encoder", "V3 Audio Encoder", "Gestures from Audio", "Save Dub"])
@pytest.mark.parametrize("rate", BAD)
def test_an_absurd_sample_rate_is_named_with_the_fix_not_called_too_short(monkeypatch, tmp_path, node, rate):
    """1 GHz: "audio is too short: 16 samples at 16 kHz" (the encoders) or nothing said (Save Dub muxed it); NaN on Save
    Dub: "ValueError: cannot convert float NaN to integer"."""
    run = _rate_runs(monkeypatch, tmp_path)[node]
    with pytest.raises(EchoMimicError) as info:
        run(_speech(rate))
    msg = str(info.value)
    assert "sample rate" in msg and "too short" not in msg, msg
    if rate in HIGH:
        assert f"{rate}" in msg and "768000 Hz" in msg and "resample" in msg, msg
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 384000, 768000])
def test_real_sample_rates_still_go_on(monkeypatch, tmp_path, rate):
    with pytest.raises(Reached):
        _rate_runs(monkeypatch, tmp_path)["Audio Encoder"](_speech(rate))


def test_the_library_names_the_rate_too():
    with pytest.raises(EchoMimicError, match=r"sample rate 1000000000 Hz is above the 768000 Hz"):
        sub("echomimic_lib.audio.waveform").read_raw_audio(_speech(10**9))
