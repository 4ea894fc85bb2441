"""The doctor's ``echomimic download`` fix on Windows: by name where ``echomimic`` is on PATH, else through the Python
that runs the doctor (ComfyUI's portable build puts the command in python_embeded\\Scripts, on no PATH). POSIX text
is as before."""
import sys
from pathlib import Path

from echomimic_lib.jobs.doctor import models as doctor_models
from echomimic_lib.jobs.doctor import shell


def _fix(tmp_path):
    return doctor_models.download_command("v1_audio", "acc", tmp_path / "my models", tmp_path / "default")


def test_windows_without_echomimic_on_path_runs_the_module(tmp_path, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(shell.shutil, "which", lambda name: None)
    monkeypatch.setattr(sys, "executable", r"C:\ComfyUI_windows_portable\python_embeded\python.exe")
    line = _fix(tmp_path)
    assert line.startswith(r'& C:\ComfyUI_windows_portable\python_embeded\python.exe -m echomimic_lib.cli download '), line
    assert f'--models "{tmp_path / "my models"}"' in line


def test_windows_with_echomimic_on_path_and_posix_use_the_name(tmp_path, monkeypatch):
    monkeypatch.setattr(shell, "is_windows", lambda: True)
    monkeypatch.setattr(shell.shutil, "which", lambda name: r"C:\tools\echomimic.exe")
    assert _fix(tmp_path).startswith("echomimic download --weights v1_audio --variant acc")
    monkeypatch.setattr(shell, "is_windows", lambda: False)
    monkeypatch.setattr(shell.shutil, "which", lambda name: None)
    assert _fix(tmp_path) == f"echomimic download --weights v1_audio --variant acc --models '{Path(tmp_path) / 'my models'}'"
