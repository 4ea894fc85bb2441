"""A V3 render says what it is about to do, as V1/V2 renders do (`describe`): size, frames, seconds, steps, audio
CFG, seed, device and dtype, logged once the inputs are checked and before any weight file is looked up (a README
walk found V3 renders silent until their final "wrote ..." line)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from echomimic_lib.jobs import animate_v3
from echomimic_lib.jobs.v3_plan import V3Request


def _plan(**kw):
    req = V3Request(reference="anna.png", audio="a.wav", output="out.mp4", models="m", steps=kw.get("steps", 8), seed=7,
                    device="cpu", dtype=torch.bfloat16)
    return SimpleNamespace(req=req, size=(480, 832), frames=kw.get("frames", 50), lora=kw.get("lora", ()))


def test_describe_v3_names_what_the_render_will_be():
    line = animate_v3.describe_v3(_plan(frames=50, steps=4))
    assert "480x832" in line and "50 frames = 2.00 s at 25 fps" in line, line
    assert "4 steps" in line and "audio cfg 3" in line and "seed 7" in line and "cpu bfloat16" in line, line
    assert "LoRA" not in line
    assert "2 LoRA" in animate_v3.describe_v3(_plan(lora=(("a", 1.0), ("b", 0.5))))


def test_the_status_line_comes_before_the_weights_are_looked_up(monkeypatch, caplog):
    class Stop(Exception):
        pass

    def no_files(*a, **k):
        raise Stop

    monkeypatch.setattr(animate_v3, "model_files", no_files)
    plan = _plan()
    with caplog.at_level(logging.INFO, logger=animate_v3.log.name), pytest.raises(Stop):
        animate_v3._run_v3(plan.req, plan, None, 0.0)
    assert [r.getMessage() for r in caplog.records] == [animate_v3.describe_v3(plan)]
