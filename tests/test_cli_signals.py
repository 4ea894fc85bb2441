"""``echomimic`` stopped by SIGINT (Ctrl-C) or SIGTERM (a job scheduler preempting it) while it writes: one line on
stderr, no traceback, exit code 130 / 143, no temporary file left and the destination untouched; a batch's
results.jsonl stays whole and a rerun resumes. SIGTERM used to end the process at once (exit -15) with the
temporary video left beside the destination. Real subprocesses; each is signalled while a hook holds it in the
middle of a write (tests/_signal_runs.py)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe
from tests._media import write_wav
from tests._signal_runs import ECHOMIMIC_MAIN, ENV, ROOT, WRITER_HOOK, interrupt_when_writing, one_clean_line

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}
FAST = ["--width", "64", "--height", "64", "--steps", "1", "--offline", "-q"]


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    from echomimic_lib.tiny import make_tiny

    d = tmp_path_factory.mktemp("signals")
    make_tiny(d / "models", version="v1")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(1.0 * sr)], sr)
    (d / "hook.py").write_text(WRITER_HOOK + ECHOMIMIC_MAIN)
    return d


def _partials(folder):
    return [p.name for p in folder.iterdir() if "partial" in p.name]


def _check_partial_exists(folder):
    def check():
        assert _partials(folder), "the hook should hold a temporary file"
    return check


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_animate_stopped_while_writing_leaves_nothing(media, shared_data, tmp_path, sig):
    out = tmp_path / "out"
    out.mkdir()
    args = ["animate", "--smoke", "--models", tmp_path / "smoke", "--reference", shared_data / "images" / "portrait_a.png",
            "--audio", media / "speech.wav", "--no-face-crop", "-o", out / "v.mp4"]
    rc, err = interrupt_when_writing(media / "hook.py", args, sig, while_blocked=_check_partial_exists(out))
    word, code = WORDS[sig]
    assert rc == code, err
    one_clean_line(err, f"{word}; nothing half-written was left behind")
    assert list(out.iterdir()) == []


def test_dub_terminated_while_writing_keeps_the_old_output(media, shared_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "d.mp4").write_bytes(b"an earlier result")  # replaced only by a finished file
    args = ["dub", "--video", shared_data / "video" / "driving_a.mp4", "--audio", media / "speech.wav", "-o", out / "d.mp4",
            "--models", media / "models", "--mediapipe-model",
            shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task", "--cfg", "1", "--context-frames", "24",
            "--context-overlap", "0", *FAST]
    rc, err = interrupt_when_writing(media / "hook.py", args, signal.SIGTERM, while_blocked=_check_partial_exists(out))
    assert rc == 143, err
    one_clean_line(err, "terminated (SIGTERM); nothing half-written was left behind")
    assert [p.name for p in out.iterdir()] == ["d.mp4"] and (out / "d.mp4").read_bytes() == b"an earlier result"


GESTURE_HOOK = r'''
import numpy as np
_savez = np.savez_compressed

def savez_compressed(file, *a, **kw):  # the gesture index is written into its temporary file, not yet renamed
    _savez(file, *a, **kw)
    if ".partial" in str(file):
        block(file)

np.savez_compressed = savez_compressed
'''


def test_gestures_index_terminated_while_written_leaves_no_partial_index(media, shared_data, tmp_path):
    from tests._signal_runs import HOOK_HEAD

    library = tmp_path / "poses"
    shutil.copytree(shared_data / "pose" / "fight", library / "fight")
    hook = tmp_path / "gestures_hook.py"
    hook.write_text(HOOK_HEAD + GESTURE_HOOK + ECHOMIMIC_MAIN)
    out = tmp_path / "out"
    out.mkdir()
    args = ["animate", "--smoke", "--version", "v2", "--models", tmp_path / "smoke", "--reference",
            shared_data / "images" / "halfbody_0035.png", "--audio", media / "speech.wav", "--pose", "auto",
            "--gesture-library", library, "-o", out / "g.mp4"]
    rc, err = interrupt_when_writing(hook, args, signal.SIGTERM, while_blocked=_check_partial_exists(library))
    assert rc == 143, err
    one_clean_line(err, "terminated (SIGTERM)")
    assert sorted(p.name for p in library.iterdir()) == ["fight"]  # no half-written index beside the folder
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_batch_terminated_by_a_scheduler_keeps_results_whole_and_a_rerun_resumes(media, shared_data, tmp_path):
    manifest = tmp_path / "jobs.csv"
    portrait = shared_data / "images" / "portrait_a.png"
    manifest.write_text("name,reference,audio,seed,no_face_crop\n"
                        + "".join(f"r{i},{portrait},{media / 'speech.wav'},{i},true\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["batch", manifest, "-o", out, "--models", media / "models", "--offline", "-q", "--set", "steps=1", "--set",
            "width=64", "--set", "height=64", "--set", "length=3", "--threads", "1", "--no-scores", "--workers", "1"]
    # r0 finishes, r1 is held mid-write in the worker; SIGTERM goes to the batch and its worker (the process group)
    rc, err = interrupt_when_writing(media / "hook.py", args, signal.SIGTERM, env={"BLOCK_STEM": "r1"}, group=True,
                                     while_blocked=_check_partial_exists(out))
    assert rc == 143, err
    one_clean_line(err, "terminated (SIGTERM)")
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [("r0", "ok")]
    assert sorted(p.name for p in out.iterdir()) == ["r0.mp4", "results.jsonl"]
    done = os.stat(out / "r0.mp4").st_mtime_ns
    rerun = subprocess.run([sys.executable, "-m", "echomimic_lib.cli", *map(str, args)], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in records] == [("r0", "ok"), ("r1", "ok"), ("r2", "ok")]
    assert os.stat(out / "r0.mp4").st_mtime_ns == done  # the finished row was skipped
    assert probe(out / "r1.mp4")["frames"] == 3
