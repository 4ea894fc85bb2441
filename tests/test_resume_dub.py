"""``echomimic dub --resumable``: a dub stopped part-way goes on from its last finished denoising step, to the same
frames; batch dub rows take the column too."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.video_io import read_video
from echomimic_lib.jobs.dub import DubRequest, run_dub
from echomimic_lib.pipeline.resume import state_path
from tests.test_dub_stream import TINY, _speech

STEPS = 3


class Stop(KeyboardInterrupt):
    pass


def _req(tmp_path, models, shared, name, **kw):
    return DubRequest(video=str(shared / "video" / "driving_a.mp4"), audio=str(_speech(tmp_path, shared, 0.5)),
                      output=str(tmp_path / name), models=str(models / "echomimic"),
                      **dict(TINY, steps=STEPS, context_frames=8, context_overlap=2), **kw)


def _stop_in_step(step, seen):
    def progress(done, total):
        seen.append((done, total))
        if done == (step - 1) * (total // STEPS) + 1:
            raise Stop()

    return progress


def test_a_stopped_dub_goes_on_from_its_last_step_to_the_same_frames(tiny_comfy_models, shared_data, tmp_path):
    whole = run_dub(_req(tmp_path, tiny_comfy_models, shared_data, "whole.mp4"))
    req = _req(tmp_path, tiny_comfy_models, shared_data, "dub.mp4", resumable=True)
    with pytest.raises(Stop):
        run_dub(req, _stop_in_step(3, []))
    state = state_path(req.output)
    assert state.is_file() and not (tmp_path / "dub.mp4").exists()
    seen = []
    out = run_dub(req, lambda done, total: seen.append((done, total)))
    per_step = seen[0][1] // STEPS
    assert seen[0][0] == 2 * per_step + 1 and len(seen) == per_step  # only the last step ran
    assert out["frames"] == whole["frames"] and not state.exists()
    a = read_video(tmp_path / "whole.mp4", with_audio=False).frames
    b = read_video(tmp_path / "dub.mp4", with_audio=False).frames
    assert np.array_equal(a, b)


def test_dub_resumable_is_refused_with_deep_cache_before_any_work(tiny_comfy_models, shared_data, tmp_path):
    with pytest.raises(EchoMimicError, match="DeepCache"):
        run_dub(_req(tmp_path, tiny_comfy_models, shared_data, "d.mp4", resumable=True, deep_cache=2))
    assert not (tmp_path / "d.mp4").exists()


def test_dub_command_line_takes_resumable():
    from echomimic_lib.cli import build_parser

    args = build_parser().parse_args(["dub", "--video", "v.mp4", "--audio", "a.wav", "-o", "o.mp4", "--resumable"])
    assert args.resumable is True
