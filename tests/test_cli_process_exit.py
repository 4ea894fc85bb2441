"""How ``echomimic`` and ``echomimic-train`` end when their reader goes away or they get SIGTERM
(echomimic_lib/cli/process_exit.py).

- stdout closed by its reader (``... | head -1``): exit code 141, nothing on stderr. ``echomimic-train plan`` / ``presets``
  and ``echomimic evaluate`` used to print ``error: Broken pipe; check that the path exists ...`` (the file-system
  error branch) and exit with 2. A pipe whose read end is already closed makes every write fail at once, so the
  result does not depend on timing.
- SIGTERM raises Terminated only while a command runs: exit code 143, and the previous handler is back afterwards; a
  handler the embedding program installed is kept; no module installs one at import.
- ``--help`` into such a pipe: 141 too (argparse drops the failed write; the parsers are PipeAwareParser).
- A second SIGINT / SIGTERM during the clean-up of the first is ignored: the clean-up finishes, the first one's code.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from tests._signal_runs import ENV, ROOT


pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and signals")


def _run_into_closed_pipe(args: list) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write_end)


def _quiet(err: str) -> None:
    for bad in ("Broken pipe", "BrokenPipeError", "Traceback", "Exception ignored", "error:"):
        assert bad not in err, err


@pytest.mark.parametrize("args", [
    ["-m", "trainer", "plan", "--preset", "v1_stage1"],
    ["-m", "trainer", "presets"],
    ["-m", "echomimic_lib.cli", "evaluate", "{pkl}", "--audio", "{wav}"],
    ["-m", "echomimic_lib.cli", "evaluate", "{pkl}", "--audio", "{wav}", "--json"],
], ids=["train-plan", "train-presets", "evaluate-table", "evaluate-json"])
def test_a_closed_stdout_ends_quietly_with_141(args, shared_data):
    args = [a.format(pkl=shared_data / "v1_pose_pkl", wav=shared_data / "audio" / "echomimic_en.wav") for a in args]
    r = _run_into_closed_pipe(args)
    assert r.returncode == 141, r.stderr
    _quiet(r.stderr)


@pytest.mark.parametrize("unbuffered", ["1", ""], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("args", [["-m", "echomimic_lib.cli", "--help"], ["-m", "echomimic_lib.cli", "animate", "--help"],
                                  ["-m", "echomimic_lib.cli", "queue", "--help"],
                                  ["-m", "trainer", "--help"], ["-m", "trainer", "plan", "--help"]])
def test_help_into_a_closed_pipe_is_quiet_with_141(args, unbuffered, monkeypatch):
    """Unbuffered, or longer than the buffer (animate's help, 10 kB), the help's write failed inside argparse, which
    dropped the error: the command ended with 0."""
    monkeypatch.setitem(ENV, "PYTHONUNBUFFERED", unbuffered)
    r = _run_into_closed_pipe(args)
    assert r.returncode == 141, r.stderr  # argparse itself drops a failed write of the help: PipeAwareParser does not
    _quiet(r.stderr)


def test_a_closed_pipe_elsewhere_is_still_an_error(tmp_path, capsys, monkeypatch):
    """Only stdout's reader going away is quiet: a broken pipe to anything else (stdout fine) is reported."""
    from trainer import cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "_cmd_presets", broken)
    assert cli.main(["presets"]) == 2
    assert "Broken pipe" in capsys.readouterr().err


SIGTERM_SCRIPT = r"""
import os, signal, sys, time
import trainer.cli as cli
import echomimic_lib.cli as ecli
import echomimic_lib.cli.weights as weights

seen = []

def terminate_me(args):
    seen.append(signal.getsignal(signal.SIGTERM))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the handler raises before this returns
    return 0

cli._cmd_presets = terminate_me
weights._cmd_make_tiny = terminate_me
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
rc_train = cli.main(["presets"])
after_train = signal.getsignal(signal.SIGTERM)
rc_echo = ecli.main(["make-tiny", "unused"])
after_echo = signal.getsignal(signal.SIGTERM)
print(rc_train, rc_echo, seen[0] is not signal.SIG_DFL, after_train is signal.SIG_DFL, after_echo is signal.SIG_DFL)

def own(signum, frame):
    print("own handler", flush=True)

signal.signal(signal.SIGTERM, own)  # an embedding program's own handler stays in charge
def check(args):
    seen.append(signal.getsignal(signal.SIGTERM))
    return 0
cli._cmd_presets = check
print(cli.main(["presets"]), seen[-1] is own, signal.getsignal(signal.SIGTERM) is own)
"""


def test_sigterm_raises_only_while_a_command_runs_and_gives_143():
    r = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    lines = r.stdout.splitlines()
    assert lines[0] == "143 143 True True True", r.stdout  # raised while running, the default handler back afterwards
    assert lines[1] == "0 True True", r.stdout
    assert "Traceback" not in r.stderr and r.stderr.count("terminated (SIGTERM)") == 2, r.stderr


def test_a_command_run_from_another_thread_works():
    """signal.signal works only in the main thread: a command run from a worker thread goes without the handler."""
    from trainer.cli import main

    box = {}
    worker = threading.Thread(target=lambda: box.update(rc=main(["presets"])))
    worker.start()
    worker.join(120)
    assert box == {"rc": 0}


IMPORT_ALL = r"""
import importlib, pkgutil, signal
watched = (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP)
before = [signal.getsignal(s) for s in watched]
for pkg in ("echomimic_lib", "trainer"):
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
print([signal.getsignal(s) for s in watched] == before)
"""


def test_no_module_installs_a_signal_handler_at_import():
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "True", (r.stdout, r.stderr[-3000:])


SECOND_SIGNAL = r"""
import os, signal, sys, time
import trainer.cli as cli
import echomimic_lib.cli as ecli
import echomimic_lib.cli.weights as weights

first, second = (getattr(signal, name) for name in sys.argv[2:4])

def body(args):
    try:
        os.kill(os.getpid(), first)
        time.sleep(30)  # the handler raises before this returns
    finally:  # the clean-up, during which the signal comes again (Ctrl-C pressed twice)
        os.kill(os.getpid(), second)
        for _ in range(20):
            time.sleep(0.01)  # a handler would run here and cut the clean-up short
        print("clean-up finished", flush=True)
    return 0

cli._cmd_presets = weights._cmd_make_tiny = body
rc = cli.main(["presets"]) if sys.argv[1] == "train" else ecli.main(["make-tiny", "unused"])
print(rc, signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


@pytest.mark.parametrize("command,first,second", [("train", "SIGINT", "SIGINT"), ("train", "SIGINT", "SIGTERM"),
                                                  ("train", "SIGTERM", "SIGINT"), ("train", "SIGTERM", "SIGTERM"),
                                                  ("echomimic", "SIGINT", "SIGINT")])
def test_a_second_signal_does_not_cut_the_clean_up_short(command, first, second):
    """The first SIGINT / SIGTERM starts the clean-up; another one while it runs is ignored: the clean-up finishes, the
    exit code is the first signal's, and Python's own handlers are back once the command has returned."""
    r = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, command, first, second], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    code, word = {"SIGINT": (130, "interrupted"), "SIGTERM": (143, "terminated (SIGTERM)")}[first]
    assert r.stdout.splitlines() == ["clean-up finished", f"{code} True True"], (r.stdout, r.stderr[-3000:])
    assert "Traceback" not in r.stderr and r.stderr.count("interrupted") + r.stderr.count("terminated") == 1, r.stderr
    assert word in r.stderr, r.stderr
