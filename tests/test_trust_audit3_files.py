"""Third trust audit, written files: the peft layout's staging folder is unique per writer and removed on failure,
and what stands where a folder goes is never replaced."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.lora import LoraAdapter, LoraInfo, write_peft


def _adapter() -> LoraAdapter:
    g = torch.Generator().manual_seed(0)
    layers = {f"{net}.blocks.{i}.to_q": (torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g))
              for net in ("reference", "denoiser") for i in range(2)}
    return LoraAdapter(Path("x.safetensors"), LoraInfo(weights="v1_audio", rank=2, alpha=2.0), layers)


def test_peft_staging_of_another_writer_is_left_alone(tmp_path):
    dest = tmp_path / "me-peft"
    other = dest / ".denoiser.partial"  # the fixed staging name an earlier version (or another writer) used
    other.mkdir(parents=True)
    (other / "adapter_model.safetensors").write_bytes(b"another writer's work in progress")
    folders = write_peft(_adapter(), dest)
    assert sorted(f.name for f in folders) == ["denoiser", "reference"]
    assert (other / "adapter_model.safetensors").read_bytes() == b"another writer's work in progress"
    assert sorted(p.name for p in dest.iterdir()) == [".denoiser.partial", "denoiser", "reference"]
    mode = (dest / "denoiser").stat().st_mode & 0o777  # the umask's folder mode, not a temporary folder's 0700
    assert mode == 0o777 & ~_umask(), oct(mode)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_two_writers_get_their_own_staging_folders(tmp_path, monkeypatch):
    import echomimic_lib.lora.peft_layout as layout

    seen = []
    real = layout.temp_folder_beside

    def spy(final):
        tmp = real(final)
        seen.append(tmp)
        return tmp

    monkeypatch.setattr(layout, "temp_folder_beside", spy)
    write_peft(_adapter(), tmp_path / "a")
    write_peft(_adapter(), tmp_path / "a", force=True)
    assert len(seen) == 4 and len(set(seen)) == 4
    assert all(p.name.startswith(".") and p.name.endswith(".partial") for p in seen)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


def test_a_failed_peft_write_leaves_no_staging_folder_and_keeps_the_old_folder(tmp_path, monkeypatch):
    import safetensors.torch

    dest = tmp_path / "me-peft"
    write_peft(_adapter(), dest)
    before = (dest / "denoiser" / "adapter_model.safetensors").read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError):
        write_peft(_adapter(), dest, force=True)
    assert sorted(p.name for p in dest.iterdir()) == ["denoiser", "reference"]
    assert (dest / "denoiser" / "adapter_model.safetensors").read_bytes() == before


def test_a_file_or_link_where_a_peft_folder_goes_is_refused_before_anything_is_written(tmp_path):
    dest = tmp_path / "me-peft"
    dest.mkdir()
    (dest / "reference").write_text("my notes")
    with pytest.raises(EchoMimicError, match="not a folder"):
        write_peft(_adapter(), dest, force=True)
    assert sorted(p.name for p in dest.iterdir()) == ["reference"]  # the denoiser folder was not written either
    assert (dest / "reference").read_text() == "my notes"
    (dest / "reference").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (dest / "denoiser").symlink_to(elsewhere)
    with pytest.raises(EchoMimicError, match="not a folder"):
        write_peft(_adapter(), dest, force=True)
    assert (elsewhere / "keep.txt").read_text() == "mine" and (dest / "denoiser").is_symlink()


# ------------------------------------------------------------------------------------------ pose folders and indexes
def test_overwriting_a_pose_folder_with_a_shorter_sequence_leaves_no_old_frames(shared_data, tmp_path):
    from echomimic_lib.pose import load_pose, save_released_folder

    seq = load_pose(shared_data / "pose" / "01")
    folder = save_released_folder(seq[:12], tmp_path / "poses")
    (folder / "notes.txt").write_text("mine")
    save_released_folder(seq[20:25], folder, overwrite=True)
    again = load_pose(folder)
    assert len(again) == 5  # the old frames 5..11 would have played on after the new five
    assert sorted(p.name for p in folder.iterdir()) == ["0.npy", "1.npy", "2.npy", "3.npy", "4.npy", "notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EchoMimicError, match="is a file, not a folder"):
        save_released_folder(seq[:2], tmp_path / "afile", overwrite=True)


def test_a_pose_npz_is_written_through_a_unique_temporary_file(shared_data, tmp_path):
    from echomimic_lib.pose import load_pose, load_pose_npz, save_pose_npz

    seq = load_pose(shared_data / "pose" / "01")[:6]
    other = tmp_path / ".clip.partial.npz"  # the fixed temporary name an earlier version (or another writer) used
    other.write_bytes(b"another writer's work in progress")
    real = tmp_path / "kept" / "real.npz"
    real.parent.mkdir()
    (tmp_path / "clip.npz").symlink_to(real)  # a link: written through, the link stays
    save_pose_npz(seq, tmp_path / "clip.npz")
    assert other.read_bytes() == b"another writer's work in progress"
    assert (tmp_path / "clip.npz").is_symlink() and len(load_pose_npz(real)) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [".clip.partial.npz", "clip.npz", "kept"]


def test_the_gesture_index_never_shares_a_temporary_file_nor_leaves_one(shared_data, tmp_path, caplog):
    import shutil

    from echomimic_lib.pose.gestures import load_library

    lib = tmp_path / "poses"
    shutil.copytree(shared_data / "pose" / "fight", lib / "fight")
    other = lib / ".fight.gestures.partial.npz"  # another indexer's (the earlier fixed name)
    other.write_bytes(b"another indexer's work in progress")
    load_library(lib)
    assert other.read_bytes() == b"another indexer's work in progress" and (lib / ".fight.gestures.npz").is_file()
    # a folder where the index goes: used uncached, said in the log, nothing left behind
    (lib / ".fight.gestures.npz").unlink()
    (lib / ".fight.gestures.npz").mkdir()
    other.unlink()
    with caplog.at_level("WARNING"):
        assert load_library(lib).names == ["fight"]
    assert any("gesture index not cached" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in lib.iterdir()) == [".fight.gestures.npz", "fight"]
