"""Ctrl-C answers at once (issue 28: it took 33 s at 2048 px): the render runs in a worker thread, and a SIGINT
while one long native operation is in flight removes the temporary video and ends the process with 130."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ECHOMIMIC_SHARED_DIR", ROOT.parent / "shared")).resolve() / "data"

# the sampler's first frames reach the writer (a temporary .partial.mp4 exists), then one "operation" blocks for a
# minute in native code (time.sleep releases the GIL like a long convolution does)
SCRIPT = r"""
import sys, time
import echomimic_lib.pipeline.sampler as sampler
from echomimic_lib.cli import main

def slow(self, image, audio, condition, settings, progress=None, frame_sink=None, **kw):
    import numpy as np
    frame_sink(0, np.zeros((1, settings.height, settings.width, 3), np.uint8))
    print("IN-FLIGHT", flush=True)
    time.sleep(60)

sampler.Sampler.__call__ = slow
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_during_a_long_operation_ends_at_once_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-c", SCRIPT, "animate", "--smoke", "--models", str(tmp_path / "models"), "--reference",
           str(DATA / "images" / "portrait_a.png"), "--audio", str(DATA / "audio" / "echomimic_en.wav"), "--no-face-crop",
           "-o", str(out / "v.mp4")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        line = ""
        deadline = time.time() + 300
        while "IN-FLIGHT" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert "IN-FLIGHT" in line, proc.stderr.read()
        assert any(p.name.endswith(".partial.mp4") for p in out.iterdir())  # the writer's temporary file exists
        t = time.time()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
        waited = time.time() - t
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == 130 and "interrupted; nothing half-written was left behind" in err and "Traceback" not in err, err
    assert waited < 10  # not the minute the operation in flight would take
    assert list(out.iterdir()) == []
