"""One whole-number coercion (errors.as_whole) for every linked or loaded number, and V3 seeds over the whole of
0..2^64-1 like V1/V2's: a long clip's chunk seeds (seed + k) wrap instead of overflowing torch's generator after the
first chunk was paid for."""
from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError, as_whole
from tests._pack import sub


@pytest.mark.parametrize("value, whole", [
    (7, 7), (7.0, 7), (-1.0, -1), (np.int64(3), 3), (np.uint64(2**64 - 1), 2**64 - 1), (np.float32(2.0), 2),
    (Fraction(4, 2), 2), (2.5, None), (float("nan"), None), (float("inf"), None), (-float("inf"), None),
    (True, None), (False, None), (np.bool_(True), None), ("7", None), (None, None), ([1], None)])
def test_as_whole_takes_whole_numbers_of_any_numeric_type_and_nothing_else(value, whole):
    got = as_whole(value)
    assert got == whole and (got is None or type(got) is int)


def test_the_old_copies_now_agree_with_as_whole():
    """Seeds, Face Track's reference frame, sampler steps, DeepCache numbers and V3 max_frames all coerce alike."""
    from echomimic_lib.pipeline.settings import settings_for, whole_seed
    from echomimic_lib.speed import check_deep_cache

    _frame_number = sub("nodes.face_track")._frame_number
    PackError = sub("echomimic_lib.errors").EchoMimicError  # the pack's own copy of the library, as ComfyUI loads it

    assert whole_seed(np.float64(9.0)) == 9 and type(whole_seed(np.int32(9))) is int
    assert _frame_number(np.int16(4)) == 4 and _frame_number(-1.0) is None
    s = settings_for("audio", steps=np.int64(3))
    s.validate()
    assert s.steps == 3 and type(s.steps) is int
    assert check_deep_cache(np.int64(2), "3") == (2, 3)
    for bad in (True, 2.5, float("nan")):
        with pytest.raises(EchoMimicError):
            whole_seed(bad)
        with pytest.raises(PackError):
            _frame_number(bad)
        with pytest.raises(EchoMimicError, match="whole number"):
            check_deep_cache(bad, 0)


def test_a_long_v3_clip_with_the_largest_seed_gets_a_seed_for_every_chunk(monkeypatch):
    """Seed 2^64-1 (the V3 node's and V1/V2's largest): chunk 1 asked torch for 2^64 and failed after chunk 0's
    sampling. Chunk k now draws from (seed + k) mod 2^64; seeds below 2^64 - k are unchanged."""
    from echomimic_lib.pipeline.wan import long
    from echomimic_lib.pipeline.wan.sampler import V3Settings, _noise

    seeds = []

    def fake_generate(model, vae, ref, prompt, clip, windows, settings, **kw):
        _noise(settings, (1, 16, 2, 2, 2))  # what the real sampler draws first (torch refuses 2^64)
        seeds.append(settings.seed)
        return SimpleNamespace(frames=np.zeros((windows, 4, 4, 3), np.float32))

    monkeypatch.setattr(long, "generate", fake_generate)
    monkeypatch.setattr(long, "chunk_windows", lambda enc, samples, total, s, length, margin: length)
    out = long.generate_long(None, None, None, np.zeros((4, 4, 3), np.uint8), None, None, np.zeros(16000, np.float32),
                             25, V3Settings(seed=2**64 - 1, color_transfer=False), chunk=9, overlap=2)
    assert len(out) == 25 and seeds == [2**64 - 1, 0, 1, 2]
    seeds.clear()
    long.generate_long(None, None, None, np.zeros((4, 4, 3), np.uint8), None, None, np.zeros(16000, np.float32),
                       25, V3Settings(seed=43, color_transfer=False), chunk=9, overlap=2)
    assert seeds == [43, 44, 45, 46]  # as before


@pytest.mark.parametrize("seed, ok", [(2**63, True), (2**64 - 1, True), (8.0, True), (2**64, False), (-1, False),
                                      (1.5, False), (True, False)])
def test_v3_settings_take_the_same_seeds_as_v1_v2(seed, ok):
    from echomimic_lib.jobs.v3_plan import check_v3_settings

    def check():
        check_v3_settings(8, 3.0, seed, "reanchor", (768, 768))

    if ok:
        check()
    else:
        with pytest.raises(EchoMimicError, match=r"--seed .*0 to 2\^64-1"):
            check()


def test_the_v3_seed_widget_spans_what_the_sampler_takes():
    spec = sub("nodes.v3").EchoMimicV3Sampler.INPUT_TYPES()["required"]["seed"][1]
    assert spec["min"] == 0 and spec["max"] == 2**64 - 1


def _numbers(**kw):
    from echomimic_lib.jobs.animate_checks import check_numbers
    from echomimic_lib.modes import get_mode

    zero = kw.pop("zero_default", True)
    req = SimpleNamespace(**{**dict(fps=25.0, steps=None, cfg=None, length=None, context_frames=12, context_overlap=3,
                                    seed=None, width=None, height=None), **kw})
    return check_numbers(req, get_mode("v1-audio+landmarks"), "normal", None, zero_default=zero)[0]


def test_dub_and_animate_share_the_number_checks_with_their_own_meaning_of_zero():
    """``dub`` checks its numbers with animate's rules and words (option names), but its --cfg 0 switches guidance
    off and --steps 0 is refused, as its help says; animate's 0 is the default."""
    assert _numbers(cfg=0.0).cfg == 2.5 and _numbers(steps=0).steps == 30  # animate: 0 = the default
    assert _numbers(cfg=0.0, zero_default=False).cfg == 0.0  # dub: guidance off
    assert _numbers(zero_default=False).cfg == 2.5 and _numbers(zero_default=False).steps == 30  # left out: the default
    with pytest.raises(EchoMimicError, match=r"--steps 0: use 1\.\.200 .*left out: the default"):
        _numbers(steps=0, zero_default=False)
    with pytest.raises(EchoMimicError, match=r"--seed -1: use a whole number from 0 to 2\^64-1"):
        _numbers(seed=-1, zero_default=False)
