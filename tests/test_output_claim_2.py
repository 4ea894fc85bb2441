"""Output files of the command line, second round.

1. A Ctrl-C in ``echomimic animate`` (the render runs in a worker thread; the main thread removes the temporary files and
   ends the process without waiting) left the empty folder its output claim had made for ``-o new/dir/out.mp4``; an
   error or Ctrl-C in ``echomimic landmarks`` / ``poses`` before anything was in place left the empty folders their
   writers had made. Now only the folders this run made, and only while empty, are removed; a folder that was there
   before is kept.
2. ``echomimic landmarks`` / ``poses --preview P.mp4`` replaced a file that appeared at P while they ran (the main
   output already kept such a file), and a symlink that appeared there was written through (its target replaced).
   Now the preview follows the main output's rule: kept, and nothing is written.
3. Two ``echomimic landmarks`` / ``poses`` runs on one output both wrote (with ``--preview`` one run's ``-o`` could end
   beside the other's preview, and a failing run's undo removed the other run's output): they now claim their outputs
   as ``animate`` / ``dub`` / ``v3`` do, and a second run is refused naming the first.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
MP = "face_landmarker_v2_with_blendshapes.task"
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT, fcntl, symlinks")


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _poses(shared_data, out, *extra):
    return ["poses", "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--length", "24",
            "--gesture-library", str(shared_data / "pose" / "01"), "--width", "64", *map(str, extra)]


def _landmarks(shared_data, out, *extra):
    return ["landmarks", str(shared_data / "video" / "driving_a.mp4"), "-o", str(out), "--mediapipe-model",
            str(shared_data / "mediapipe" / MP), "--offline", "-q", "--width", "64", *map(str, extra)]


# ------------------------------------------------------------------------------------------ 1. empty folders
def test_ctrl_c_in_animate_removes_the_folders_its_claim_made_and_keeps_one_that_was_there(tmp_path, shared_data):
    (tmp_path / "was_there").mkdir()
    outs = [tmp_path / "new" / "dir" / "out.mp4", tmp_path / "was_there" / "made" / "out.mp4"]
    code = textwrap.dedent("""
        import _thread, sys, threading
        import echomimic_lib.model_set as model_set
        from echomimic_lib.cli import main

        def load(*a, **k):  # the render reaches its weights: Ctrl-C while a long native operation runs
            print("loading", flush=True)
            _thread.interrupt_main()
            threading.Event().wait()

        model_set.load_models = load
        sys.exit(main(sys.argv[1:]))
    """)
    for out in outs:
        args = ["animate", "--smoke", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio",
                str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "tiny"),
                "--length", "4", "--device", "cpu"]
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 130 and "loading" in proc.stdout, proc.stderr
        assert "nothing half-written was left behind" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["tiny", "was_there"]  # new/dir: made by the claim, gone
    assert os.listdir(tmp_path / "was_there") == []  # was_there/made: gone; was_there itself: kept


def test_an_interrupted_poses_leaves_no_folder_it_made(tmp_path, shared_data, monkeypatch, capsys):
    import echomimic_lib.jobs.poses as poses

    def interrupted(staged, final, folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(poses, "_swap_in", interrupted)  # the sequence and the preview encoded, not yet in place
    out, preview = tmp_path / "a" / "b" / "talk.npz", tmp_path / "p" / "hands.mp4"
    assert cli(_poses(shared_data, out, "--preview", preview)) == 130
    assert os.listdir(tmp_path) == [], sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def test_a_failed_landmarks_write_leaves_no_folder_it_made(tmp_path, shared_data, monkeypatch, capsys):
    import echomimic_lib.landmarks.io as lio

    def full(tmp, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lio, "publish", full)
    out, preview = tmp_path / "a" / "drive.npz", tmp_path / "p" / "q" / "drive.mp4"
    assert cli(_landmarks(shared_data, out, "--preview", preview)) == 2
    assert "no space left on the disk" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [], sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


# ------------------------------------------------------------------------------------------ 2. --preview appeared
def _appears_during_poses(monkeypatch, make):
    import echomimic_lib.jobs.poses as poses

    made = poses.stabilize_poses

    def meanwhile(seq, level):
        make()
        return made(seq, level)

    monkeypatch.setattr(poses, "stabilize_poses", meanwhile)


def _appears_during_landmarks(monkeypatch, make):
    import echomimic_lib.landmarks.stabilize as stabilize

    made = stabilize.stabilize_landmarks

    def meanwhile(seq, level):
        make()
        return made(seq, level)

    monkeypatch.setattr(stabilize, "stabilize_landmarks", meanwhile)


@pytest.mark.parametrize("command", ["poses", "landmarks"])
def test_a_preview_that_appeared_while_the_command_ran_is_kept_and_nothing_is_written(
        tmp_path, shared_data, monkeypatch, capsys, command):
    out, preview = tmp_path / "seq.npz", tmp_path / "look.mp4"
    appears = _appears_during_poses if command == "poses" else _appears_during_landmarks
    appears(monkeypatch, lambda: preview.write_bytes(b"another run's preview"))
    argv = (_poses if command == "poses" else _landmarks)(shared_data, out, "--preview", preview)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"--preview {preview} appeared while this command ran" in err and "--force" in err, err
    assert preview.read_bytes() == b"another run's preview"
    assert sorted(os.listdir(tmp_path)) == ["look.mp4"]  # -o not written either: never a sequence without its preview


@pytest.mark.parametrize("command", ["poses", "landmarks"])
def test_a_symlink_that_appeared_at_the_preview_is_not_written_through(tmp_path, shared_data, monkeypatch, capsys,
                                                                       command):
    (tmp_path / "elsewhere").mkdir()
    victim = tmp_path / "elsewhere" / "holiday.mp4"
    victim.write_bytes(b"someone's video")
    out, preview = tmp_path / "seq.npz", tmp_path / "look.mp4"
    appears = _appears_during_poses if command == "poses" else _appears_during_landmarks
    appears(monkeypatch, lambda: preview.symlink_to(victim))
    argv = (_poses if command == "poses" else _landmarks)(shared_data, out, "--preview", preview)
    rc = cli(argv)
    assert victim.read_bytes() == b"someone's video" and preview.is_symlink()  # (was: replaced by the preview)
    assert rc == 2 and f"--preview {preview} appeared while this command ran" in capsys.readouterr().err
    assert not out.exists()


def test_force_still_replaces_a_preview(tmp_path, shared_data, capsys):
    out, preview = tmp_path / "seq.npz", tmp_path / "look.mp4"
    preview.write_bytes(b"old")
    assert cli(_poses(shared_data, out, "--preview", preview, "--force")) == 0, capsys.readouterr().err
    assert preview.read_bytes()[4:8] == b"ftyp" and out.is_file()
    assert sorted(os.listdir(tmp_path)) == ["look.mp4", "seq.npz"]  # no claim file left


# ------------------------------------------------------------------------------------------ 3. one run per output
def _hold(lock: Path) -> subprocess.Popen:
    """Another process that holds the OS lock ``lock`` (another run's claim) until its stdin closes."""
    code = ("import sys; from echomimic_lib.jobs.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def holder():
    procs = []

    def start(lock):
        procs.append(_hold(lock))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=60)


def _no_pose_model(monkeypatch):
    import echomimic_lib.jobs.poses as poses

    def fail(*a, **k):
        pytest.fail("the poses were made although the output is another run's")

    monkeypatch.setattr(poses, "speech_gestures", fail)
    monkeypatch.setattr(poses, "dwpose_detector", fail)


@pytest.mark.parametrize("name", ["talk.npz", "talk_poses"])
def test_a_second_poses_on_the_same_output_is_refused_before_any_work(tmp_path, shared_data, holder, monkeypatch,
                                                                      capsys, name):
    out = tmp_path / name
    first = holder(tmp_path / f".{name}.lock")
    _no_pose_model(monkeypatch)
    assert cli(_poses(shared_data, out)) == 2
    err = capsys.readouterr().err
    assert f"-o {out}: another run is writing this output (pid {first.pid} on host" in err, err
    assert "--force does not override a running run" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == [f".{name}.lock"]


def test_a_poses_preview_another_run_writes_is_refused(tmp_path, shared_data, holder, monkeypatch, capsys):
    first = holder(tmp_path / ".look.mp4.lock")  # e.g. `echomimic animate -o look.mp4`, still rendering
    _no_pose_model(monkeypatch)
    assert cli(_poses(shared_data, tmp_path / "talk.npz", "--preview", tmp_path / "look.mp4")) == 2
    err = capsys.readouterr().err
    assert f"--preview {tmp_path / 'look.mp4'}: another run is writing this output (pid {first.pid}" in err, err
    assert sorted(os.listdir(tmp_path)) == [".look.mp4.lock"]


def test_a_second_landmarks_on_the_same_output_is_refused_before_mediapipe(tmp_path, shared_data, holder, monkeypatch,
                                                                          capsys):
    import echomimic_lib.landmarks.extractor as extractor

    out = tmp_path / "drive.npz"
    first = holder(tmp_path / ".drive.npz.lock")

    def fail(*a, **k):
        pytest.fail("MediaPipe loaded although the output is another run's")

    monkeypatch.setattr(extractor.FaceLandmarkExtractor, "__init__", fail)
    assert cli(_landmarks(shared_data, out)) == 2
    err = capsys.readouterr().err
    assert f"-o {out}: another run is writing this output (pid {first.pid} on host" in err, err
    assert sorted(os.listdir(tmp_path)) == [".drive.npz.lock"]
