"""Run a command-line tool in a real subprocess, wait until it is producing output (a line it prints when a hook
has it in the middle of a write), send it a signal, and collect what it left (tests/test_cli_signals.py,
tests/test_train_signals.py). No fixed sleeps: the signal goes when the marker line arrives."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}

# a script file (not -c): spawned batch workers import it again as __mp_main__, so the hook is in them too
HOOK_HEAD = r'''
import os, sys, time

def block(what):
    """Stop here, in the middle of writing, until a signal ends the process."""
    print(f"IN-FLIGHT {what}", flush=True)
    time.sleep(600)
'''

WRITER_HOOK = HOOK_HEAD + r'''
import echomimic_lib.io.video_writer as vw
_write = vw.Mp4Writer.write

def write(self, frames):  # the first frames are in the temporary .partial.mp4, then the process "works" on
    _write(self, frames)
    if os.environ.get("BLOCK_STEM", self.path.stem) == self.path.stem:
        block(self._tmp)

vw.Mp4Writer.write = write
'''

ECHOMIMIC_MAIN = r'''
if __name__ == "__main__":
    from echomimic_lib.cli import main
    sys.exit(main(sys.argv[1:]))
'''

TRAIN_MAIN = r'''
if __name__ == "__main__":
    from trainer.cli import main
    sys.exit(main(sys.argv[1:]))
'''


def start(script: Path | list, args: list, env: dict | None = None, stderr=subprocess.PIPE) -> subprocess.Popen:
    """``script``: a hook script run by this Python, or a whole command line before ``args``."""
    head = [str(a) for a in script] if isinstance(script, list) else [sys.executable, str(script)]
    return subprocess.Popen([*head, *map(str, args)], cwd=ROOT, env={**ENV, **(env or {})},
                            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)


def interrupt_when_writing(script: Path | list, args: list, sig: int, env: dict | None = None, group: bool = False,
                           while_blocked=None, writers: int = 1) -> tuple[int, str]:
    """Start, wait for ``writers`` ``IN-FLIGHT`` lines (one per process that writes), call ``while_blocked()`` (it
    checks the half-written state), send ``sig`` (to the whole process group with ``group``: what a job scheduler
    does), return (exit code, stderr)."""
    err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty process never blocks on a full stderr pipe
    proc = start(script, args, env, stderr=err)
    try:
        for _ in range(writers):
            line = ""
            while not line.startswith("IN-FLIGHT") and proc.poll() is None:
                line = proc.stdout.readline()
            assert line.startswith("IN-FLIGHT"), f"ended before it was writing (rc {proc.poll()}): {_read(err)[-3000:]}"
        if while_blocked is not None:
            while_blocked()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rc = proc.wait(timeout=300)  # a safety net only: the clean-up takes well under a second
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return rc, _read(err)


def _read(fh) -> str:
    fh.seek(0)
    text = fh.read()
    fh.close()
    return text


def one_clean_line(err: str, word: str) -> None:
    """The interrupt is reported in one line, with no traceback and no logging error."""
    assert "Traceback" not in err and "Logging error" not in err, err
    assert [line for line in err.splitlines() if word in line], err
