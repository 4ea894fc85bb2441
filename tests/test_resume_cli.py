"""``echomimic animate --resumable`` killed by a job scheduler (SIGTERM) while a step is in flight: the process ends at
once with 143, the last finished step is on disk, and the same command goes on from there."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from echomimic_lib.cli import main
from echomimic_lib.pipeline.resume import state_path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"

# after step 2 of 4 the worker thread blocks for a minute (as one long native operation would)
SCRIPT = r"""
import sys, time
from echomimic_lib.pipeline.resume import StepCheckpoint
from echomimic_lib.cli import main

original = StepCheckpoint.after_step

def slow(self, step, latents, last):
    original(self, step, latents, last)
    if step == 1:
        print("IN-FLIGHT", flush=True)
        time.sleep(60)

StepCheckpoint.after_step = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_keeps_the_last_step_and_the_same_command_goes_on(tmp_path, caplog):
    out = tmp_path / "v.mp4"
    args = ["animate", "--smoke", "--models", str(tmp_path / "models"), "--reference", str(DATA / "images" / "portrait_a.png"),
            "--audio", str(DATA / "audio" / "echomimic_en.wav"), "--no-face-crop", "--steps", "4", "--resumable",
            "-o", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        line, deadline = "", time.time() + 300
        while "IN-FLIGHT" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "IN-FLIGHT" in line, proc.stderr.read()
        assert not state_path(out).exists()  # nothing written yet: the periodic save is minutes away
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 143 and "Traceback" not in err, err
    assert state_path(out).is_file() and not out.exists()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0  # the same command: steps 3 and 4, then the video
    assert "steps 1..2 are done" in caplog.text
    assert out.is_file() and not state_path(out).exists()
