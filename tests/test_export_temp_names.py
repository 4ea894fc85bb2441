"""LoRA exports write under a unique temporary name in the destination folder: two exports to one path at once used
the same fixed name (``.<stem>.partial.safetensors`` for v3-export, ``.<name>.partial`` for a V1/V2 LoRA export), so
one overwrote, published or deleted the other's half-written file. A failed write leaves no temporary file."""
from __future__ import annotations

import json

import pytest

from tests.test_trust import _fake_checkpoint

OLD_NAMES = {"v3-export": ".mine.partial.safetensors", "export": ".mine.safetensors.partial"}


def _checkpoint(tmp_path, command):
    ckpt = _fake_checkpoint(tmp_path, lora=True)
    if command == "v3-export":
        meta = json.loads((ckpt / "meta.json").read_text())
        (ckpt / "meta.json").write_text(json.dumps({**meta, "family": "v3", "lora": {**meta["lora"], "layers": 1}}))
    return ckpt


@pytest.mark.parametrize("command", ["export", "v3-export"])
def test_another_exports_temporary_file_is_left_alone(command, tmp_path, capsys):
    from trainer.cli import main

    ckpt = _checkpoint(tmp_path, command)
    out = tmp_path / "out"
    out.mkdir()
    other = out / OLD_NAMES[command]  # where a concurrent export of the same destination is writing
    other.write_bytes(b"another export, half written")
    rc = main([command, str(ckpt), str(out / "mine.safetensors"), "--no-verify"])
    assert rc == 0, capsys.readouterr().err
    assert other.read_bytes() == b"another export, half written"
    assert sorted(p.name for p in out.iterdir()) == sorted([other.name, "mine.safetensors"])  # no temporary file left


@pytest.mark.parametrize("command", ["export", "v3-export"])
def test_a_failed_write_leaves_no_temporary_file_and_names_are_unique(command, tmp_path, capsys, monkeypatch):
    import safetensors.torch as st

    from trainer.cli import main

    ckpt = _checkpoint(tmp_path, command)
    out = tmp_path / "out"
    out.mkdir()
    real, names = st.save_file, []

    def half(tensors, filename, metadata=None):
        names.append(filename)
        real(tensors, filename, metadata=metadata)
        if len(names) == 2:
            raise OSError(5, "Input/output error", filename)
    monkeypatch.setattr(st, "save_file", half)
    assert main([command, str(ckpt), str(out / "mine.safetensors"), "--no-verify"]) == 0
    assert main([command, str(ckpt), str(out / "mine.safetensors"), "--no-verify", "--force"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "input/output error" in err.lower(), err
    assert len(set(names)) == 2 and all(n.startswith(str(out / ".mine.")) for n in names), names
    assert [p.name for p in out.iterdir()] == ["mine.safetensors"]  # the first export's file, nothing partial
