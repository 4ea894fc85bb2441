"""Every file the pack finishes (weights, LoRAs, plots, results.jsonl) follows one rule set (``file_safety.publish``): a
symlink at the destination is written through (the link stays, its target gets the contents), a folder, pipe or device
there is never replaced, and the file gets the umask's permissions, not a temporary file's 0600."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from echomimic_lib.cli import main as cli


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _write(kind: str, dest: Path) -> None:
    if kind == "convert":
        src = dest.parent.parent / "src" / "w.pth"
        src.parent.mkdir(exist_ok=True)
        torch.save({"a": torch.arange(3.0)}, src)
        rc = cli(["convert", str(src), str(dest), "--force"])
        assert rc == 0
    elif kind == "lora":
        from echomimic_lib.lora import LoraInfo, write_lora

        write_lora(dest, {"x.lora_A.weight": torch.zeros(2, 2), "x.lora_B.weight": torch.zeros(2, 2)}, LoraInfo(weights="v1_audio"))
    elif kind == "plot":
        from echomimic_lib.evaluate.plot import save_png

        save_png(dest, np.zeros((8, 8, 3), np.uint8))
    else:
        from echomimic_lib.jobs.batch.results import ResultsFile

        results = ResultsFile(dest.parent)
        results.rewrite([{"name": "a", "status": "ok"}])
        results.close()


NAMES = {"convert": "w.safetensors", "lora": "a.safetensors", "plot": "p.png", "results": "results.jsonl"}


@pytest.mark.parametrize("kind", list(NAMES))
def test_a_symlink_is_written_through_and_kept(kind, tmp_path, umask_022):
    out = tmp_path / "out"
    real = tmp_path / "elsewhere" / NAMES[kind]
    real.parent.mkdir()
    out.mkdir()
    real.write_bytes(b"old")
    (out / NAMES[kind]).symlink_to(real)
    _write(kind, out / NAMES[kind])
    assert (out / NAMES[kind]).is_symlink() and os.readlink(out / NAMES[kind]) == str(real)
    assert real.read_bytes() != b"old" and real.stat().st_size > 3
    assert stat.S_IMODE(real.stat().st_mode) == 0o644
    assert sorted(p.name for p in out.iterdir()) == [NAMES[kind]] and sorted(p.name for p in real.parent.iterdir()) == [real.name]


@pytest.mark.parametrize("kind", ["convert", "lora"])
def test_a_pipe_at_the_destination_is_never_replaced(kind, tmp_path, capsys):
    from echomimic_lib.errors import EchoMimicError

    out = tmp_path / "out"
    out.mkdir()
    fifo = out / NAMES[kind]
    os.mkfifo(fifo)
    if kind == "convert":
        src = tmp_path / "w.pth"
        torch.save({"a": torch.arange(3.0)}, src)
        assert cli(["convert", str(src), str(fifo), "--force"]) == 2
        err = capsys.readouterr().err
        assert "not a regular file" in err and "never replaced" in err and "Traceback" not in err, err
    else:
        with pytest.raises(EchoMimicError, match="never replaced"):
            _write(kind, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(out) == [NAMES[kind]]


def test_v3_export_force_writes_through_a_symlink_and_never_replaces_a_pipe(tmp_path, capsys):
    """`echomimic-train v3-export --force` onto a symlink writes the link's target (it refused the link before); a pipe
    there is refused, with a message, and stays."""
    from tests.test_export_temp_names import _checkpoint
    from trainer.cli import main as train

    ckpt = _checkpoint(tmp_path, "v3-export")
    real, out = tmp_path / "elsewhere" / "mine.safetensors", tmp_path / "out"
    real.parent.mkdir()
    out.mkdir()
    real.write_bytes(b"old")
    (out / "mine.safetensors").symlink_to(real)
    assert train(["v3-export", str(ckpt), str(out / "mine.safetensors"), "--no-verify", "--force"]) == 0, capsys.readouterr().err
    assert (out / "mine.safetensors").is_symlink() and real.read_bytes()[:3] != b"old" and real.stat().st_size > 3
    assert sorted(p.name for p in real.parent.iterdir()) == ["mine.safetensors"]
    os.mkfifo(out / "pipe.safetensors")
    assert train(["v3-export", str(ckpt), str(out / "pipe.safetensors"), "--no-verify", "--force"]) == 2
    assert "never replaced" in capsys.readouterr().err
    assert stat.S_ISFIFO(os.lstat(out / "pipe.safetensors").st_mode)
