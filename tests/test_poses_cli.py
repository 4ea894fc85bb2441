"""`echomimic poses`: hand poses from a driving video (DWPose, through tiny stand-in ONNX models built here) or
gestures from speech, kept as a pose folder or .npz, with a preview; and the refusals, said before any model loads."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from echomimic_lib.cli import main as cli  # noqa: E402
from echomimic_lib.io.audio_file import read_audio  # noqa: E402
from echomimic_lib.io.video_io import probe, write_video
from echomimic_lib.pose import load_pose, save_pose_npz  # noqa: E402
from tests._media import write_wav  # noqa: E402
from tests.test_pose_dwpose import build_peak_pose, build_red_detector, layout_positions  # noqa: E402

FRAMES, NOBODY = 12, (4, 5)  # the driving video: a red "person" moving right, gone in frames 4 and 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with stand-in DWPose models under dwpose/ (the red-square detector, fixed-peak pose)."""
    root = tmp_path_factory.mktemp("models")
    (root / "dwpose").mkdir()
    build_red_detector(root / "dwpose" / "yolox_l.onnx")
    build_peak_pose(root / "dwpose" / "dw-ll_ucoco_384.onnx", layout_positions())
    return root


@pytest.fixture(scope="module")
def driving(tmp_path_factory):
    frames = np.zeros((FRAMES, 360, 640, 3), np.uint8)
    for i in range(FRAMES):
        if i not in NOBODY:
            x = 256 + 16 * i
            frames[i, 128:192, x:x + 64] = (255, 0, 0)
    return write_video(tmp_path_factory.mktemp("video") / "driving.mp4", frames, 24.0)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, shared_data):
    wav, sr = read_audio(shared_data / "audio" / "echomimic_zh.wav")
    return write_wav(tmp_path_factory.mktemp("audio") / "zh.wav", wav[0, : int(1.5 * sr)], sr)


@pytest.fixture(scope="module")
def library(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("gestures") / "poses"
    for name in ("01", "fight"):  # indexed beside the folders: copies, not the shared ones
        shutil.copytree(shared_data / "pose" / name, root / name)
    return root


def _extracted(models, driving, on_missing="interpolate"):
    from echomimic_lib.pose.dwpose import DWPoseDetector, extract_pose_sequence

    det = DWPoseDetector.from_models_dir(models)
    return extract_pose_sequence(driving, det, on_missing=on_missing)  # the loader node's path, straight


def test_video_to_pose_folder_and_npz_load_back_as_extracted(models, driving, tmp_path, capsys):
    want = _extracted(models, driving)
    assert want.report.missing_frames == list(NOBODY)
    for out in (tmp_path / "walk", tmp_path / "walk.npz"):
        rc = cli(["poses", "--video", str(driving), "-o", str(out), "--models", str(models), "--offline", "-q"])
        assert rc == 0
        got = load_pose(out)
        assert got.identical(want), out
        line = capsys.readouterr().out
        assert f"wrote {out}" in line and f"{FRAMES} frames at 24 fps" in line and "no person found in 2 frames" in line
    assert sorted(p.name for p in (tmp_path / "walk").iterdir()) == sorted(f"{i}.npy" for i in range(FRAMES))
    assert not list(tmp_path.glob(".*"))  # no staging left
    # the loader node's missing-frame policy: hold repeats the pose before; fail stops and writes nothing
    held = tmp_path / "held.npz"
    assert cli(["poses", "--video", str(driving), "-o", str(held), "--models", str(models), "--offline", "-q",
                "--on-missing", "hold"]) == 0
    seq = load_pose(held)
    assert seq.identical(_extracted(models, driving, "hold")) and np.array_equal(seq.hands[5], seq.hands[3])
    failed = tmp_path / "failed.npz"
    assert cli(["poses", "--video", str(driving), "-o", str(failed), "--models", str(models), "--offline", "-q",
                "--on-missing", "fail"]) == 2
    assert "no person was found in 2 of 12 frames" in capsys.readouterr().err and not failed.exists()
    assert not list(tmp_path.glob(".*"))


def _animate_auto(speech, library, ref, tmp_path, seed=None):
    """The poses `animate --version v2 --pose auto` would draw, from its own preflight and code."""
    from echomimic_lib.jobs.animate import AnimateRequest, gesture_poses
    from echomimic_lib.jobs.animate_checks import preflight

    plan = preflight(AnimateRequest(reference=str(ref), audio=str(speech), output=str(tmp_path / "x.mp4"), mode="v2-halfbody",
                                    pose="auto", gesture_library=str(library), seed=seed, device="cpu", download=False))
    return gesture_poses(plan.request, None, plan.reference, plan.settings.num_frames, plan.settings)


def test_audio_gestures_equal_what_animate_pose_auto_uses(speech, library, shared_data, tmp_path, capsys):
    ref = shared_data / "images" / "halfbody_0035.png"
    for seed in (None, 7):
        out = tmp_path / f"g{seed}.npz"
        extra = [] if seed is None else ["--seed", str(seed)]
        rc = cli(["poses", "--audio", str(speech), "-o", str(out), "--gesture-library", str(library), "-q"] + extra)
        assert rc == 0
        want = _animate_auto(speech, library, ref, tmp_path, seed)
        assert len(want) == 36  # 1.5 s at 24 fps
        assert load_pose(out).identical(want)
        assert "36 frames at 24 fps" in capsys.readouterr().out
    assert not load_pose(tmp_path / "gNone.npz").identical(load_pose(tmp_path / "g7.npz"))  # the seed counts
    folder = tmp_path / "g_folder"  # the released format too (it keeps no fps: 24 is what readers assume)
    assert cli(["poses", "--audio", str(speech), "-o", str(folder), "--gesture-library", str(library), "-q"]) == 0
    assert load_pose(folder).identical(load_pose(tmp_path / "gNone.npz"))


def test_preview_frames_and_audio(models, driving, speech, library, tmp_path):
    out, prev = tmp_path / "g.npz", tmp_path / "g.mp4"
    assert cli(["poses", "--audio", str(speech), "-o", str(out), "--gesture-library", str(library), "--preview", str(prev),
                "--width", "64", "--height", "96", "--fps", "25", "-q"]) == 0
    info, seq = probe(prev), load_pose(out)
    assert len(seq) == info["frames"] == 37 and info["fps"] == 25 and (info["width"], info["height"]) == (64, 96)
    assert info["audio_seconds"] == pytest.approx(37 / 25, abs=0.05)
    vprev = tmp_path / "v.mp4"
    assert cli(["poses", "--video", str(driving), "-o", str(tmp_path / "v.npz"), "--models", str(models), "--offline",
                "--preview", str(vprev), "--width", "128", "-q"]) == 0
    info = probe(vprev)
    assert info["frames"] == FRAMES and (info["width"], info["height"]) == (128, 128) and info["audio_seconds"] is None
    from echomimic_lib.io.video_io import read_video
    from echomimic_lib.pose import draw_hands

    drawn = read_video(vprev, with_audio=False).frames[0].astype(int)
    want = draw_hands(load_pose(tmp_path / "v.npz"), 0, (128, 128)).astype(int)
    assert want.any() and np.abs(drawn - want).mean() < 8  # the hands as animate draws them (H.264 loss aside)


def test_force_replaces_a_pose_folder_and_a_file(models, driving, speech, library, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    for i in range(50):  # a longer earlier sequence: its frames past the new end must not survive
        (out / f"{i}.npy").write_bytes(b"old")
    assert cli(["poses", "--audio", str(speech), "-o", str(out), "--gesture-library", str(library), "--force", "-q"]) == 0
    assert len(list(out.iterdir())) == 36 and len(load_pose(out)) == 36
    npz = tmp_path / "p.npz"
    npz.write_bytes(b"old")
    assert cli(["poses", "--video", str(driving), "-o", str(npz), "--models", str(models), "--offline", "--force", "-q"]) == 0
    assert len(load_pose(npz)) == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "p.npz"]


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_every_refusal_comes_before_any_model_and_leaves_nothing(models, driving, speech, library, tmp_path, capsys,
                                                                  monkeypatch):
    import echomimic_lib.jobs.poses as job

    def loaded(*a, **k):
        raise AssertionError("a model / the gesture library was loaded before the refusal")

    monkeypatch.setattr(job, "dwpose_detector", loaded)
    monkeypatch.setattr(job, "speech_gestures", loaded)
    w = tmp_path / "work"
    w.mkdir()
    (w / "old.npz").write_bytes(b"old")
    (w / "old_poses").mkdir()
    (w / "old_poses" / "0.npy").write_bytes(b"old")
    (w / "mixed").mkdir()
    (w / "mixed" / "0.npy").write_bytes(b"old")
    (w / "mixed" / "notes.txt").write_text("mine")
    (w / "notes").write_text("a file")
    (w / "old.mp4").write_bytes(b"old")
    (w / "not_video.txt").write_text("hello")
    lib_npz = w / "lib.npz"
    save_pose_npz(_extracted(models, driving), lib_npz)  # a gesture library of one .npz
    (w / "no_models").mkdir()
    v = ["poses", "--video", str(driving), "--models", str(models), "--offline", "-q"]
    a = ["poses", "--audio", str(speech), "--gesture-library", str(library), "-q"]
    cases = [
        (v + ["-o", str(w / "old.npz")], "already exists", "--force"),
        (a + ["-o", str(w / "old_poses")], "already exists", "--force"),
        (a + ["-o", str(w / "mixed"), "--force"], "never replaced, not even with --force", "notes.txt"),
        (a + ["-o", str(w / "notes"), "--force"], "is a file, not a folder", ".npz"),
        (["poses", "--audio", str(speech), "--gesture-library", str(lib_npz), "-o", str(lib_npz), "--force"],
         "is the same file as --gesture-library", "another -o"),
        (v + ["-o", str(w / "new.npz"), "--preview", str(driving), "--force"], "is the same file as --video", "--preview"),
        (v + ["-o", str(w / "new.npz"), "--preview", str(w / "old.mp4")], "already exists", "--force"),
        (a + ["-o", str(w / "new.npz"), "--fps", "0"], "--fps 0", "between 1 and 120"),
        (a + ["-o", str(w / "new.npz"), "--expressiveness", "3"], "--expressiveness 3.0", "0 (calm) to 2"),
        (["poses", "--audio", str(speech), "--gesture-library", str(w / "nope"), "-o", str(w / "new.npz")], "nope not found",
         "--gesture-library"),
        (["poses", "--audio", str(speech), "--models", str(w / "no_models"), "-o", str(w / "new.npz")],
         "no_models/poses not found", "--gesture-library"),
        (["poses", "--video", str(driving), "--models", str(w / "no_models"), "--offline", "-o", str(w / "new.npz")],
         "yolox_l.onnx", "Without --offline"),
        (v + ["-o", str(w / "new.npz"), "--seed", "3"], "--seed is for --audio", "drop it"),
        (a + ["-o", str(w / "new.npz"), "--on-missing", "hold"], "--on-missing is for --video", "drop it"),
        (v + ["-o", str(w / "new.mp4")], "a folder (0.npy, 1.npy, ...) or a .npz", "--preview"),
        (v + ["-o", str(w / "new.npz"), "--preview", str(w / "p.mp4"), "--width", "60"], "--width 60", "multiple of 8"),
        (["poses", "--video", str(w / "not_video.txt"), "-o", str(w / "new.npz")], "cannot be opened as a media file",
         "video of a person"),
    ]
    before = _tree(w)
    for args, *words in cases:
        assert cli(args) == 2, args
        err = capsys.readouterr().err
        assert all(word in err for word in words), (args, err)
        assert _tree(w) == before, args  # nothing written, nothing replaced, no staging left
    assert (w / "old.npz").read_bytes() == b"old" and (w / "mixed" / "notes.txt").read_text() == "mine"

