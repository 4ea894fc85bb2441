"""EchoMimic Gestures from Audio and the pose loader's 'continue' retiming, called directly (ComfyUI stubbed by the
bridge's stand-ins) on tiny random weights, with pose folder 01 (48 frames) in models/echomimic/poses/."""
from __future__ import annotations


import numpy as np
import pytest
from tests._pack import sub
from tests.test_nodes import DATA, FPS, SIZE, N, EchoMimicError, audio, encode, image, models, sample, v2  # noqa: F401


def gestures(**kw):
    args = dict(library="all pose folders", seed=0, expressiveness=1.0, fps=FPS, min_pause=0.5, align="none", auto_download=False)
    args.update(kw)
    return N["EchoMimicGesturesFromAudio"]().execute(**args)


def test_gestures_from_audio_features_drive_the_v2_sampler(v2):  # noqa: F811
    feats, _, n = encode(v2, 0.5)
    poses, preview = gestures(audio_features=feats)
    assert len(poses.sequence) == n and poses.sequence.fps == FPS and preview.shape[1:] == (256, 256, 3)
    ref = N["EchoMimicReferencePrep"]().execute(image("halfbody_0035.png"), "resize only", SIZE, SIZE, "error", False)[0]
    frames, _, _ = sample(v2, ref, feats, poses=poses)
    assert frames.shape == (n, SIZE, SIZE, 3)


def test_an_audio_at_a_frame_rate_one_folder_and_a_seed(models):  # noqa: F811
    a, _ = gestures(audio=audio(2.0), fps=25.0, library="01", seed=3)
    b, _ = gestures(audio=audio(2.0), fps=25.0, library="01", seed=3)
    assert len(a.sequence) == 50 and a.sequence.identical(b.sequence)
    assert (models / "echomimic" / "poses" / ".01.gestures.npz").is_file()  # indexed beside the folder


def test_bad_inputs_name_the_fix(models, tmp_path, monkeypatch):  # noqa: F811
    with pytest.raises(EchoMimicError, match="no speech: connect"):
        gestures()
    with pytest.raises(EchoMimicError, match="needs the reference image"):
        gestures(audio=audio(0.5), align="fit to reference shoulders")
    with pytest.raises(EchoMimicError, match="pose folder 'nope' not found"):
        gestures(audio=audio(0.5), library="nope")
    with pytest.raises(EchoMimicError, match=r"\.\./x' is not a name inside"):
        gestures(audio=audio(0.5), library="../x")
    C = sub("nodes.comfy_bridge")
    empty = tmp_path / "models"
    (empty / "echomimic" / "poses" / "notes").mkdir(parents=True)
    monkeypatch.setattr(C, "MODELS_DIR", empty)
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    with pytest.raises(EchoMimicError, match="no pose folders to take gestures from"):
        gestures(audio=audio(0.5))


def test_pose_loader_continue_carries_a_short_folder_on_with_the_speech(models, v2):  # noqa: F811
    poses, _ = N["EchoMimicPoseSequenceLoader"]().execute("01", 24.0, "continue", "none", "interpolate", False)
    feats, _, n = encode(v2, 3.0)  # 72 frames of speech, 48 of poses
    cond = poses.condition(n, SIZE, SIZE, FPS, feats.audio)
    pingpong = poses.sequence.retime(n, "ping-pong", out_fps=FPS)
    first = cond.render(list(range(48)))
    from echomimic_lib.pose import draw_hands_batch

    assert np.array_equal(first, draw_hands_batch(pingpong, range(48), (SIZE, SIZE)))  # the folder itself first
    assert not np.array_equal(cond.render([60]), draw_hands_batch(pingpong, [60], (SIZE, SIZE)))  # then not backwards
    # without the speech: ping-pong (logged); an explicit ping-pong (e.g. a saved workflow's widget) stays ping-pong
    assert np.array_equal(poses.condition(n, SIZE, SIZE, FPS).render([60]), draw_hands_batch(pingpong, [60], (SIZE, SIZE)))
    stored, _ = N["EchoMimicPoseSequenceLoader"]().execute("01", 24.0, "ping-pong", "none", "interpolate", False)
    cond = stored.condition(n, SIZE, SIZE, FPS, feats.audio)
    assert np.array_equal(cond.render([60, 71]), draw_hands_batch(pingpong, [60, 71], (SIZE, SIZE)))
    choices, opts = N["EchoMimicPoseSequenceLoader"].INPUT_TYPES()["required"]["retime"]
    assert "continue" in choices and "ping-pong" in choices and opts["default"] == "continue"  # the default for new nodes
