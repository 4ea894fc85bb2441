"""Two renders on the same ``-o`` at once: the last one to finish silently won, and with ``--resumable`` both kept
their state in the same ``OUTPUT.resume``. Now a render claims its output file after the checks and before any weight
loads (:class:`echomimic_lib.jobs.output_file.OutputClaim`): a second one is refused naming the first, a claim left
by a process that is gone is taken over, and the claim goes when the render ends, however it ends."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL, fcntl")


def _claim_file(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _hold(out: Path) -> subprocess.Popen:
    """Another process (a second terminal's render) that holds the claim on ``out`` until its stdin closes."""
    code = ("import sys; from echomimic_lib.jobs.output_file import OutputClaim; c = OutputClaim(sys.argv[1]).acquire(); "
            "print('claimed', flush=True); sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


@pytest.fixture
def holder(tmp_path):
    procs = []

    def start(out):
        procs.append(_hold(out))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=60)


def _no_weights(monkeypatch):
    import echomimic_lib.model_set as model_set

    def fail(*a, **k):
        pytest.fail("weights were looked for or loaded although the output is another run's")

    monkeypatch.setattr(model_set, "ensure_weights", fail)
    monkeypatch.setattr(model_set, "load_models", fail)


def _animate(shared_data, out, models):
    return ["animate", "--smoke", "--reference", str(shared_data / "images" / "portrait_a.png"), "--audio",
            str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(models), "--length", "4"]


def test_a_second_animate_on_the_same_output_is_refused_before_any_weight_naming_the_first(
        tmp_path, shared_data, holder, monkeypatch, capsys):
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "no_models"))
    out = tmp_path / "out.mp4"
    first = holder(out)
    _no_weights(monkeypatch)
    assert cli(_animate(shared_data, out, tmp_path / "tiny")) == 2
    err = capsys.readouterr().err
    assert f"-o {out}: another render is writing this file (pid {first.pid} on host" in err, err
    assert "give this one another -o, or wait for that one to finish" in err
    assert "--force does not override a running render" in err and "Traceback" not in err
    assert not out.exists() and json.loads(_claim_file(out).read_text())["pid"] == first.pid  # the first's, untouched


def test_a_claim_through_a_symlink_or_a_relative_path_is_the_same_claim(tmp_path, holder, monkeypatch):
    from echomimic_lib.jobs.output_file import OutputClaim

    (tmp_path / "real").mkdir()
    out = tmp_path / "real" / "out.mp4"
    out.write_bytes(b"old")
    (tmp_path / "link.mp4").symlink_to(out)
    holder(out)
    monkeypatch.chdir(tmp_path / "real")
    for same in ("out.mp4", tmp_path / "link.mp4"):
        with pytest.raises(EchoMimicError, match="another render is writing this file"):
            OutputClaim(same).acquire()
    with OutputClaim(tmp_path / "real" / "other.mp4"):  # another output: no conflict
        pass


def test_a_claim_left_by_a_killed_render_is_taken_over_silently(tmp_path, holder, capsys):
    from echomimic_lib.jobs.output_file import OutputClaim

    out = tmp_path / "out.mp4"
    first = holder(out)
    first.kill()  # SIGKILL: no clean-up, its claim file stays behind
    first.wait(timeout=60)
    assert _claim_file(out).is_file()
    with OutputClaim(out):
        assert json.loads(_claim_file(out).read_text())["pid"] == os.getpid()
    assert not _claim_file(out).exists()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_claim_is_gone_after_an_error_or_ctrl_c(tmp_path, shared_data, monkeypatch, error):
    import echomimic_lib.model_set as model_set
    from echomimic_lib.jobs.animate import AnimateRequest, run

    out = tmp_path / "new" / "out.mp4"  # (a folder the render makes)
    seen = []

    def load(*a, **k):
        seen.append(_claim_file(out).is_file())
        raise error

    monkeypatch.setattr(model_set, "load_models", load)
    req = AnimateRequest(reference=str(shared_data / "images" / "portrait_a.png"), output=str(out), smoke=True,
                         audio=str(shared_data / "audio" / "echomimic_en.wav"), models=str(tmp_path / "tiny"), length=4,
                         device="cpu")
    with pytest.raises(type(error)):
        run(req)
    assert seen == [True]  # held while the weights load
    assert not _claim_file(out).exists() and sorted(os.listdir(tmp_path)) == ["tiny"]  # the folder it made: gone too


def test_the_claim_is_gone_after_a_normal_render(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "no_models"))
    out = tmp_path / "out.mp4"
    assert cli(_animate(shared_data, out, tmp_path / "tiny")) == 0, capsys.readouterr().err
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_dub_and_v3_claim_their_output_before_any_model(tmp_path, holder, monkeypatch):
    from echomimic_lib.jobs import animate_v3, dub

    out = tmp_path / "out.mp4"
    first = holder(out)
    checked = SimpleNamespace(settings=None)
    monkeypatch.setattr(dub, "_validate", lambda req: checked)
    monkeypatch.setattr(dub, "prepare_dub", lambda *a: pytest.fail("the face was tracked"))
    with pytest.raises(EchoMimicError, match=f"pid {first.pid} on host"):
        dub.run_dub(dub.DubRequest(video="v.mp4", audio=None, output=str(out)))
    monkeypatch.setattr(animate_v3, "plan_v3", lambda req: SimpleNamespace(output=out))
    monkeypatch.setattr(animate_v3, "model_files", lambda *a, **k: pytest.fail("the V3 weights were looked for"))
    with pytest.raises(EchoMimicError, match="another render is writing this file"):
        animate_v3.run_v3(SimpleNamespace(models=str(tmp_path)))


def test_without_os_locks_a_live_claim_still_refuses_and_a_dead_ones_is_taken_over(tmp_path, holder, monkeypatch,
                                                                                     caplog):
    """Some network mounts answer flock with ENOLCK: the process named in the claim file is asked instead."""
    import errno
    import fcntl

    from echomimic_lib.jobs.output_file import OutputClaim

    out = tmp_path / "out.mp4"
    first = holder(out)

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(EchoMimicError, match=f"pid {first.pid} on host"):
        OutputClaim(out).acquire()
    assert "cannot lock files (No locks available)" in caplog.text
    first.kill()
    first.wait(timeout=60)
    with OutputClaim(out):
        assert json.loads(_claim_file(out).read_text())["pid"] == os.getpid()
    assert not _claim_file(out).exists()
