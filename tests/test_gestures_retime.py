"""The retime policy 'continue' as the default for V2 hand poses (library, job and node), its logged fallback to
ping-pong, explicit policies honoured, and V1 landmarks keeping ping-pong -- on synthetic speech, without weights."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pose import load_pose, save_pose_npz
from echomimic_lib.pose.gestures.continuation import covered_frames, retime_pose_sequence
from echomimic_lib.pose.gestures.speech import analyze_speech, analyze_waveform
from echomimic_lib.retime import POLICIES, POSE_POLICIES, default_policy
from tests._media import write_wav
from tests.test_gestures_speech import SR, onset_train

FPS = 25.0
LOG = "echomimic_lib.pose.gestures.continuation"


@pytest.fixture(scope="module")
def speech():
    wave, _ = onset_train(6.0, period=0.6, burst=0.3)
    return wave, analyze_waveform(wave, FPS)


@pytest.fixture(scope="module")
def short(shared_data):
    return load_pose(shared_data / "pose" / "fight")[:60]  # 2.5 s at 24 fps, the speech is 6 s


def _backwards(seq) -> bool:
    return any((np.diff(seq.report.position[a:b]) < 0).any() for a, b, _, _ in seq.report.segments)


def test_default_policy_is_continue_for_hand_poses_and_ping_pong_for_landmarks():
    assert default_policy(None, hand_pose=True) == "continue" and default_policy(None, hand_pose=False) == "ping-pong"
    assert default_policy("loop", hand_pose=True) == "loop" and default_policy("ping-pong", hand_pose=False) == "ping-pong"
    assert "continue" in POSE_POLICIES and "continue" not in POLICIES
    with pytest.raises(EchoMimicError, match="for landmark sequences; choose one of ping-pong"):
        default_policy("continue", hand_pose=False)
    with pytest.raises(EchoMimicError, match="unknown retiming policy 'bounce'"):
        default_policy("bounce", hand_pose=True)


def test_a_short_folder_carries_on_by_default_and_explicit_policies_are_honoured(short, speech, caplog):
    _, sp = speech
    n, n_time = sp.num_frames, covered_frames(short, FPS)
    with caplog.at_level(logging.WARNING, logger=LOG):
        out = retime_pose_sequence(short, n, FPS, speech=sp, seed=0)
    assert not caplog.records  # no fallback
    plan = out.report
    assert len(out) == n and plan.segments[0][:3] == (0, n_time, "given") and not _backwards(out)
    assert out[:n_time].identical(short.retime(n_time, "ping-pong", out_fps=FPS))  # the folder itself, then gestures
    for policy in ("ping-pong", "loop", "hold-last", "stretch"):  # an explicit choice is what it says
        assert retime_pose_sequence(short, n, FPS, policy, speech=sp).identical(short.retime(n, policy, out_fps=FPS))
    with pytest.raises(EchoMimicError, match="covers 62 frames"):
        retime_pose_sequence(short, n, FPS, "fail", speech=sp)
    # long enough: every policy but stretch plays the same frames, and no speech is needed for it
    assert retime_pose_sequence(short, 40, FPS).identical(short.retime(40, "ping-pong", out_fps=FPS))


def test_continue_falls_back_to_ping_pong_and_says_so(short, speech, caplog):
    wave, sp = speech
    n = sp.num_frames
    pingpong = short.retime(n, "ping-pong", out_fps=FPS)
    still = short.take(np.zeros(30, np.int64))  # nobody moves: no gesture to carry on with
    with caplog.at_level(logging.WARNING, logger=LOG):
        out = retime_pose_sequence(still, n, FPS, speech=sp)
    assert out.identical(still.retime(n, "ping-pong", out_fps=FPS))
    assert "holds no gesture to carry on with" in caplog.text and "ping-pong instead" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG):
        assert retime_pose_sequence(short, n, FPS, "continue").identical(pingpong)  # no speech given
    assert "no speech to match gestures to" in caplog.text
    audio = {"waveform": torch.tensor(wave, dtype=torch.float32)[None, None], "sample_rate": SR}  # a ComfyUI AUDIO
    from_audio = retime_pose_sequence(short, n, FPS, audio=audio, seed=0)  # analysed here, as the node does
    assert from_audio.report.segments[0][2] == "given" and not from_audio.identical(pingpong)
    assert from_audio.identical(retime_pose_sequence(short, n, FPS, speech=analyze_speech(audio, FPS), seed=0))


def test_the_animate_job_carries_a_short_folder_on_by_default(short, speech, shared_data, tmp_path):
    from echomimic_lib.jobs.animate import AnimateRequest, prepare_condition
    from echomimic_lib.modes import get_mode
    from echomimic_lib.pose import draw_hands_batch

    wave, sp = speech
    wav = write_wav(tmp_path / "speech.wav", wave, SR)
    npz = save_pose_npz(short, tmp_path / "short.npz")
    ref = np.full((64, 64, 3), 128, np.uint8)
    settings = SimpleNamespace(width=64, height=64, fps=FPS, seed=0)
    mode, n = get_mode("v2-halfbody"), sp.num_frames

    def frames(**kw):
        req = AnimateRequest(reference="ref.png", audio=str(wav), output=str(tmp_path / "o.mp4"), mode="v2-halfbody",
                             pose=str(npz), **kw)
        return prepare_condition(mode, req, ref, n, settings).condition.render(list(range(n)))

    assert AnimateRequest(reference="r", audio="a", output="o").retime is None  # the library default: per sequence
    default, pingpong = frames(), frames(retime="ping-pong")
    expected = draw_hands_batch(retime_pose_sequence(short, n, FPS, speech=sp, seed=0), range(n), (64, 64))
    assert np.array_equal(default, expected)  # continue (seed 0 as in the settings)
    assert np.array_equal(pingpong, draw_hands_batch(short.retime(n, "ping-pong", out_fps=FPS), range(n), (64, 64)))
    n_time = covered_frames(short, FPS)
    assert np.array_equal(default[:n_time], pingpong[:n_time]) and not np.array_equal(default[n_time:], pingpong[n_time:])
