"""First contact with the command line: help texts, defaults, `make-tiny`'s report, what the default log
level lets through (and what it keeps back), the progress bar's start, and `--device/--dtype auto`."""
import argparse
import logging
import os
import re
from pathlib import Path

import pytest
import torch

from echomimic_lib.cli import build_parser
from echomimic_lib.cli import main as cli


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


OWN_COMMANDS = ("animate", "download", "make-tiny", "convert")  # the other commands' texts are their authors' (issues 12, 17)


def test_every_option_has_help_with_its_default_and_required_options_show_none():
    for name, sub in _subparsers().items():
        if name == "queue":  # its own parser, checked below
            continue
        text = sub.format_help()
        assert "(default: None)" not in text and "default: False" not in text, name
        if name not in OWN_COMMANDS:
            continue
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{label}: no help text"
            rendered = sub._get_formatter()._expand_help(action) if action.help else ""
            if action.required:
                assert "default" not in rendered.lower(), f"{label}: a required option shows a default"
            elif action.default not in (None, False) and action.option_strings:
                assert "default" in rendered.lower(), f"{label}: default {action.default!r} not shown"
            assert rendered.lower().count("default:") <= 1, f"{label}: two defaults"


def test_units_and_real_defaults_are_stated(capsys):
    assert cli(["animate", "--help"]) == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for words in ("frames per second of the video, 1..120 (default: 24.0)", "video width in pixels, a multiple of 8",
                  "number of video frames", "0 = follow the audio", "(default: auto)", "CUDA, then MPS, then the CPU",
                  "face_landmarker.task", "--smoke"):
        assert words in text, words
    assert cli(["make-tiny", "--help"]) == 0
    assert "(default: all)" in re.sub(r"\s+", " ", capsys.readouterr().out)


def test_queue_help_names_echomimic_queue(capsys):
    assert cli(["queue", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: echomimic queue") and "python -m" not in out.split("\n")[0]
    assert "(default: http://127.0.0.1:8188)" in re.sub(r"\s+", " ", out)


def test_make_tiny_reports_once_and_names_the_extra_models(tmp_path, capsys, monkeypatch):
    import echomimic_lib.tiny as tiny

    monkeypatch.setattr(tiny, "make_tiny", lambda directory, **kw: Path(directory))  # the writing itself is tested elsewhere
    assert cli(["make-tiny", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert cap.out.count("written to") == 1 and "written to" not in cap.err
    assert str(tmp_path / "mediapipe" / "face_landmarker.task") in cap.out and "dwpose/yolox_l.onnx" in cap.out
    assert "V1 audio (face crop)" in cap.out and "V2 hand poses" in cap.out


def test_default_log_level_keeps_third_party_chatter_back(capsys):
    from echomimic_lib.cli.common import setup_logging

    setup_logging()
    for _ in range(2):  # per-file download notes, and Python warnings (logging.captureWarnings routes them here)
        logging.getLogger("huggingface_hub.file_download").warning("Xet Storage is enabled for this repo, but ...")
        logging.getLogger("py.warnings").warning("FutureWarning: `resume_download` is deprecated")
    logging.getLogger("echomimic_lib.jobs.animate").info("our status line")
    logging.getLogger("echomimic_lib.jobs.animate").warning("our warning")
    err = capsys.readouterr().err
    assert "Xet" not in err and "deprecated" not in err
    assert "our status line\n" in err and "warning: our warning" in err
    setup_logging(verbose=True)
    logging.getLogger("huggingface_hub.file_download").warning("now visible")
    assert "now visible" in capsys.readouterr().err
    setup_logging()


def test_mediapipe_native_lines_are_held_back_and_others_kept(capfd):
    from echomimic_lib.cli.common import setup_logging
    from echomimic_lib.landmarks.mp_models import quiet_native_logs

    setup_logging()
    with quiet_native_logs():
        os.write(2, b"W0000 00:00:1796161699.251818 9201 face_landmarker_graph.cc:181] Sets FaceBlendshapesGraph\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"a real message\n")
    err = capfd.readouterr().err
    assert "W0000" not in err and "TensorFlow Lite" not in err and "a real message" in err
    setup_logging(verbose=True)
    with quiet_native_logs():
        os.write(2, b"W0000 shown with -v\n")
    assert "W0000 shown with -v" in capfd.readouterr().err
    setup_logging()


def test_progress_bar_opens_with_the_first_step(capsys):
    from echomimic_lib.cli.common import ProgressBar

    bar = ProgressBar("sampling")
    assert capsys.readouterr().err == ""  # nothing while models load
    bar(1, 4)
    assert "sampling" in capsys.readouterr().err
    bar(4, 4)
    assert bar.bar is None  # closed at the end


def test_device_and_dtype_auto(monkeypatch):
    from echomimic_lib.devices import resolve_device, resolve_dtype

    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)  # a GPU owner gets the GPU by default
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("fp32", torch.device("cuda", 0)) == torch.float32
    with pytest.raises(Exception, match="has 1 CUDA GPU"):
        resolve_device("cuda:3")


def test_ci_runs_the_readme_quick_path_command_for_command():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Set up and test (a fresh machine)"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    commands = [" ".join(c.split()) for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    ci = (root / ".ci" / "run").read_text()
    ci = ci[ci.index("# --- the README's quick path ---"): ci.index("# --- end of the quick path ---")]
    ci_commands = [" ".join(c.split()) for c in ci.replace("\\\n", " ").splitlines()[1:] if c.strip()]
    assert len(commands) == 2, commands  # one to install and run the main job, one to install and run the tests
    assert ci_commands == commands[1:]  # CI runs exactly the second
    assert all(c.startswith('python3 -m venv .venv && .venv/bin/pip install -e ".[dev,train]" && ') for c in commands)
    assert "echomimic animate --smoke" in commands[0] and commands[1].endswith("pytest -q")
