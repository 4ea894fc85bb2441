"""``echomimic-train prepare`` and ``fit`` stopped by SIGINT (Ctrl-C) or SIGTERM (a job scheduler preempting the job)
while they write: one line that says how to go on, no traceback, exit code 130 / 143, and no half-written clip
(``<id>.partial``) or checkpoint (``.tmp-step-*``) left. SIGTERM used to end the process at once (exit -15), leaving
them. Real subprocesses, signalled while a hook holds them in the middle of the write (tests/_signal_runs.py)."""
from __future__ import annotations

import signal
import sys

import pytest

from tests._signal_runs import HOOK_HEAD, TRAIN_MAIN, interrupt_when_writing, one_clean_line
from tests.test_trainer_helpers import DATA, MEDIAPIPE, shared_dir, v1_config, write_yaml

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
WORDS = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}

PREPARE_HOOK = HOOK_HEAD + r'''
import trainer.data.store as store
_add = store.ClipWriter.add_frame

def add_frame(self, rgb):  # the clip's first frame is in <id>.partial, then the process "works" on
    _add(self, rgb)
    block(self.tmp)

store.ClipWriter.add_frame = add_frame
''' + TRAIN_MAIN

FIT_HOOK = HOOK_HEAD + r'''
import accelerate
_save = accelerate.Accelerator.save_state

def save_state(self, output_dir=None, **kw):  # the checkpoint's files are in .tmp-step-N, not yet renamed
    out = _save(self, output_dir, **kw)
    block(output_dir)
    return out

accelerate.Accelerator.save_state = save_state
''' + TRAIN_MAIN


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_prepare_stopped_mid_clip_leaves_no_partial_clip(tmp_path, sig):
    videos = tmp_path / "in"
    videos.mkdir()
    (videos / "talk.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    (videos / "talk.wav").symlink_to(DATA / "audio" / "echomimic_en.wav")
    hook = tmp_path / "hook.py"
    hook.write_text(PREPARE_HOOK)
    out = tmp_path / "ds"

    def partial_clip_exists():
        assert list(out.rglob("*.partial")), "the hook should hold a clip being written"

    args = ["prepare", videos, out, "--mediapipe-model", MEDIAPIPE, "--size", "128", "--max-seconds", "2", "--shards", "2", "-q"]
    rc, err = interrupt_when_writing(hook, args, sig, while_blocked=partial_clip_exists)
    word, code = WORDS[sig]
    assert rc == code, err
    one_clean_line(err, f"{word} (run the same command again to go on")
    assert not list(out.rglob("*partial*")), list(out.rglob("*partial*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_fit_stopped_while_checkpointing_leaves_no_partial_checkpoint(tmp_path_factory, tmp_path, sig):
    base = shared_dir(tmp_path_factory)
    run = tmp_path / "run"
    cfg = write_yaml(tmp_path / "fit.yaml", v1_config(base, run, steps=4, checkpoint={"every": 2}))
    hook = tmp_path / "hook.py"
    hook.write_text(FIT_HOOK)

    def checkpoint_being_written():
        assert list((run / "checkpoints").glob(".tmp-step-*")), "the hook should hold a checkpoint being written"

    rc, err = interrupt_when_writing(hook, ["fit", "--config", cfg], sig, while_blocked=checkpoint_being_written)
    word, code = WORDS[sig]
    assert rc == code, err
    one_clean_line(err, f"{word} (resume with --resume)")
    assert not list((run / "checkpoints").glob(".tmp-step-*"))
    assert not list((run / "checkpoints").glob("step-*"))  # the only checkpoint begun was never finished


@pytest.mark.slow
def test_fit_under_accelerate_launch_terminated_stops_every_process_cleanly(tmp_path_factory, tmp_path):
    """A scheduler's SIGTERM to `accelerate launch` (2 CPU processes, gloo): the launcher passes it to both ranks,
    each ends with the one line (no traceback) and the checkpoint both were writing is removed."""
    base = shared_dir(tmp_path_factory)
    run = tmp_path / "run"
    cfg = write_yaml(tmp_path / "fit.yaml", v1_config(base, run, steps=4, optim={"batch_size": 1}, checkpoint={"every": 2}))
    hook = tmp_path / "hook.py"
    hook.write_text(FIT_HOOK)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", hook]
    rc, err = interrupt_when_writing(launch, ["fit", "--config", cfg], signal.SIGTERM, env={"CUDA_VISIBLE_DEVICES": ""},
                                     writers=2)
    assert rc == 143, err[-4000:]
    assert "Traceback" not in err and err.count("terminated (SIGTERM) (resume with --resume)") == 2, err[-4000:]
    assert not list((run / "checkpoints").glob(".tmp-step-*")) and not list((run / "checkpoints").glob("step-*"))
