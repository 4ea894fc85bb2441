"""``echomimic animate --smoke`` (V1/V2) of a clip shorter than the smoke run's first second warned "--length 24 is
beyond the audio", naming an option the user never gave (V3's smoke run had the same, fixed in tests/test_v3_user_2.py):
the note now names the smoke run; a --length the user gives is still named."""
from __future__ import annotations

import logging

import numpy as np

from tests._media import write_wav


def _request(shared_data, tmp_path, **kw):
    from echomimic_lib.jobs.animate import AnimateRequest

    audio = write_wav(tmp_path / "short.wav", 0.3 * np.sin(2 * np.pi * 220 * np.arange(6400) / 16000))  # 0.4 s
    return AnimateRequest(reference=str(shared_data / "images" / "portrait_a.png"), audio=str(audio),
                          output=str(tmp_path / "o.mp4"), face_crop=False, download=False, smoke=True, **kw)


def test_a_smoke_run_of_a_short_clip_names_no_length(shared_data, tmp_path, monkeypatch, caplog):
    from echomimic_lib.jobs.animate_checks import preflight

    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path))
    with caplog.at_level(logging.INFO):
        assert preflight(_request(shared_data, tmp_path)).settings.num_frames == 9  # floor(0.4 s x 24 fps)
    assert "--length" not in caplog.text and "smoke run: the first 24 frames" in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert preflight(_request(shared_data, tmp_path, length=24)).settings.num_frames == 9
    assert "--length 24 is beyond the audio" in caplog.text, caplog.text  # given: still named
