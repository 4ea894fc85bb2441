"""A ComfyUI graph builder's walk, day 8: pose frames copied into a pose folder after a first run (or a gesture
library grown by a folder) were not noticed, ComfyUI reused the cached poses (the nodes had no IS_CHANGED); the Evaluate
node said "the waveform is empty" with nothing to connect, and scored frames against audio far shorter than them without
a word; Reference Preparation took a picture of NaN / inf pixels (a broken upstream node) without a word."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tests._pack import load_pack, sub

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
C = sub("nodes.comfy_bridge")
N = load_pack().NODE_CLASS_MAPPINGS


class Reached(Exception):
    """Raised where the node's own work would start: every check before it passed."""


# ------------------------------------------------------------------------------------------ 1. pose folders changed later
@pytest.fixture
def poses(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    folder = tmp_path / "models" / "echomimic" / "poses" / "01"
    folder.mkdir(parents=True)
    for i in range(3):
        np.save(folder / f"{i}.npy", np.zeros(4, np.float32))
    return folder


def _stamp(node, name):
    cls = N[node]
    key = "pose_folder" if node == "EchoMimicPoseSequenceLoader" else "library"
    return cls.IS_CHANGED(**{key: name, "fps": 24.0, "seed": 0})


CASES = [("EchoMimicPoseSequenceLoader", "01"), ("EchoMimicGesturesFromAudio", "01"),
         ("EchoMimicGesturesFromAudio", "all pose folders")]


@pytest.mark.parametrize("node,name", CASES)
def test_frames_added_to_a_pose_folder_make_comfyui_run_the_node_again(node, name, poses):
    """Was: no IS_CHANGED, so the node's cached poses came back after 3.npy, 4.npy were copied in (inputs unchanged)."""
    first = _stamp(node, name)
    assert isinstance(first, str) and _stamp(node, name) == first  # nothing changed: ComfyUI's cache holds
    np.save(poses / "3.npy", np.zeros(4, np.float32))
    added = _stamp(node, name)
    assert added != first
    np.save(poses / "0.npy", np.ones(9, np.float32))  # a frame replaced by a longer one
    replaced = _stamp(node, name)
    assert replaced != added
    st = (poses / "1.npy").stat()
    os.utime(poses / "1.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same size, written later
    assert _stamp(node, name) != replaced
    later = _stamp(node, name)
    (poses / ".gestures.npz").write_bytes(b"index")  # the library's own hidden index, written by the node: no rerun
    assert _stamp(node, name) == later


def test_a_new_pose_folder_makes_the_gesture_library_of_all_folders_run_again(poses):
    first = _stamp("EchoMimicGesturesFromAudio", "all pose folders")
    other = poses.parent.parent.parent.parent / "input" / "echomimic_poses" / "02"
    other.mkdir(parents=True)
    np.save(other / "0.npy", np.zeros(4, np.float32))
    assert _stamp("EchoMimicGesturesFromAudio", "all pose folders") != first
    assert _stamp("EchoMimicGesturesFromAudio", "01") == _stamp("EchoMimicGesturesFromAudio", "01")


@pytest.mark.parametrize("node", ["EchoMimicPoseSequenceLoader", "EchoMimicGesturesFromAudio"])
def test_is_changed_never_raises_and_reads_no_file(node, poses, monkeypatch):
    """ComfyUI calls IS_CHANGED before the node runs: odd names give a string (the node names the problem itself)."""
    import builtins

    def no_reading(*args, **kwargs):
        raise AssertionError(f"IS_CHANGED opened {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_reading)
    monkeypatch.setattr(np, "load", no_reading)
    for odd in ("01", "", None, "gone", "../x", "\ud800", "a\x00b", 5, "none (extract from driving_frames)",
                "all pose folders"):
        assert isinstance(_stamp(node, odd), str), odd
    (poses / "odd").symlink_to(poses / "odd")  # a link to itself inside the folder
    assert isinstance(_stamp(node, "01"), str)


# ------------------------------------------------------------------------------------------ 2. Evaluate's audio
@pytest.fixture
def no_landmarks(monkeypatch):
    def missing(download=False):
        raise sub("echomimic_lib.errors").MissingWeightsError("MediaPipe face_landmarker model not found")

    monkeypatch.setattr(sub("nodes.detectors"), "face_landmarker", missing)


def _tone(seconds, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return {"waveform": torch.from_numpy((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))[None, None],
            "sample_rate": sr}


@pytest.mark.parametrize("shape", [(1, 1, 0), (1, 2, 0), (1, 0, 100)])
def test_an_empty_waveform_names_what_to_connect(shape, no_landmarks):
    """Was: "audio: the waveform is empty (shape (1, 0))." with no fix."""
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicEvaluate"]().execute(torch.rand(4, 32, 32, 3), {"waveform": torch.zeros(shape), "sample_rate": 16000},
                                         24.0, "none", "none", False)
    msg = str(info.value)
    assert msg.startswith("audio: ") and "empty" in msg and "connect" in msg and "sampler's audio" in msg, msg


def test_audio_much_shorter_than_the_frames_is_said_in_the_notes(no_landmarks):
    """48 frames at 24 fps (2 s) against 0.5 s of sound: scored without a word before."""
    report, _ = N["EchoMimicEvaluate"]().execute(torch.rand(48, 32, 32, 3), _tone(0.5), 24.0, "none", "none", False)
    doc = json.loads(report.strip().splitlines()[-1])
    said = [n for n in doc["notes"] if "shorter than the frames" in n]
    assert len(said) == 1 and "0.50 s" in said[0] and "2.00 s" in said[0] and "48 frames" in said[0], doc["notes"]
    assert "connect" in said[0], said


@pytest.mark.parametrize("seconds", [2.0, 1.96, 3.0])
def test_audio_as_long_as_the_frames_gets_no_such_note(seconds, no_landmarks):
    report, _ = N["EchoMimicEvaluate"]().execute(torch.rand(48, 32, 32, 3), _tone(seconds), 24.0, "none", "none", False)
    doc = json.loads(report.strip().splitlines()[-1])
    assert not any("shorter than the frames" in n for n in doc["notes"]), doc["notes"]


# ------------------------------------------------------------------------------------------ 3. NaN / inf pictures
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("target", ["V1 face crop + mask", "V2 half-body crop", "resize only"])
def test_reference_preparation_refuses_nan_or_inf_pixels_before_any_work(bad, target, monkeypatch):
    ref = sub("nodes.reference")

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(ref, "prepare_reference", reached)
    monkeypatch.setattr(sub("nodes.detectors"), "dwpose", reached)
    image = torch.rand(1, 64, 64, 3)
    image[0, 10, 10, 1] = bad
    with pytest.raises(EchoMimicError) as info:
        N["EchoMimicReferencePrep"]().execute(image, target, 64, 64, "error", False)
    msg = str(info.value)
    assert msg.startswith("image: ") and "NaN or infinite" in msg and "connect" in msg, msg
    with pytest.raises(Reached):  # a clean picture goes on to the work
        N["EchoMimicReferencePrep"]().execute(torch.rand(1, 64, 64, 3), target, 64, 64, "error", False)


def test_a_value_whose_repr_fails_is_still_named():
    """Another pack's object with a broken __repr__ linked into a STRING input: the type check itself raised (its
    RuntimeError instead of the message naming the input and the fix)."""
    class Broken:
        def __repr__(self):
            raise RuntimeError("repr is broken")

    problem = sub("nodes.base").widget_type_problem(N["EchoMimicPartAwareAligner"], {"parts": Broken()})
    assert problem.startswith("parts: takes text (STRING), but it is given ") and "Broken" in problem, problem
