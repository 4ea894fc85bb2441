"""Two more writers made whole-or-nothing (audit 3's leftovers): a landmark sequence file, and a hub download moved
across file systems, each through a unique temporary file beside the destination."""
from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io import hub
from echomimic_lib.landmarks.io import load_sequence, save_sequence
from echomimic_lib.landmarks.sequence import LandmarkSequence


def _seq(frames=4, value=0.25):
    return LandmarkSequence(lmks=np.full((frames, 478, 3), value), fps=25.0)


@pytest.mark.parametrize("name", ["seq.npz", "seq.json"])
def test_a_failed_landmark_save_keeps_the_old_file_and_leaves_nothing_behind(tmp_path, monkeypatch, name):
    path = save_sequence(tmp_path / name, _seq(4, 0.25))
    before = path.read_bytes()

    def broken(target, *a, **k):  # the disk fills half way through the write
        with open(target, "wb") as f:
            f.write(b"PK\x03\x04 trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", broken)
    monkeypatch.setattr(Path, "write_text", broken)
    with pytest.raises(OSError):
        save_sequence(path, _seq(9, 0.5))
    monkeypatch.undo()
    assert path.read_bytes() == before  # old: truncated in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left
    assert load_sequence(path).lmks.shape[0] == 4


def test_a_landmark_save_writes_through_a_link_and_never_replaces_a_folder(tmp_path):
    real = tmp_path / "store" / "seq.npz"
    real.parent.mkdir()
    save_sequence(real, _seq(3))
    link = tmp_path / "seq.npz"
    link.symlink_to(real)
    save_sequence(link, _seq(6))
    assert link.is_symlink() and load_sequence(real).lmks.shape[0] == 6
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(EchoMimicError, match="folder"):
        save_sequence(tmp_path / "dir.npz", _seq(3))


def test_a_download_moved_across_file_systems_goes_through_a_unique_temporary_file(tmp_path, monkeypatch):
    src = tmp_path / "staging" / "model.safetensors"
    src.parent.mkdir()
    src.write_bytes(b"weights" * 100)
    dest = tmp_path / "models" / "model.safetensors"
    dest.parent.mkdir()
    squatter = dest.with_name(dest.name + ".partial")  # another fetch's file under the old fixed name
    squatter.write_bytes(b"someone else's")
    calls = []
    real_publish = hub.publish

    def cross_device_once(tmp, final):
        calls.append(Path(tmp))
        if len(calls) == 1:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_publish(tmp, final)

    monkeypatch.setattr(hub, "publish", cross_device_once)
    hub._move(src, dest)
    assert dest.read_bytes() == b"weights" * 100 and not src.exists()
    assert calls[1].parent == dest.parent and calls[1] != squatter
    assert squatter.read_bytes() == b"someone else's"  # old: copied over, then deleted
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.safetensors", "model.safetensors.partial"]
