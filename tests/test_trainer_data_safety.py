"""A researcher's dataset is never lost or half-written (trainer/data): a clip written again keeps its earlier folder
until the new one is in place (a kill between the renames loses neither, the next prepare run puts things right), a
kept clip whose folder is gone is prepared again, a missing or damaged clip is named with the fix before training (or
by a DataLoader worker, in one line), and ``prepare --fps`` says the sampler's rule in its words."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_trainer_helpers import DATA
from trainer.config import ConfigError
from trainer.data import store
from trainer.data.store import ClipReader, ClipWriter, read_manifest

CID = "spk0__talk"


def _clip(root: Path, take: int, frames: int = 6) -> Path:
    """One prepared clip written as prepare writes it (``take`` tells two writes apart), and its manifest row."""
    w = ClipWriter(root / "shard-00000" / CID)
    for f in range(frames):
        w.add_frame(np.full((16, 16, 3), 40 * take + f, np.uint8))
    w.finish({"id": CID, "fps": 24.0, "kind": "headshot", "size": 16, "take": take},
             {"audio16k": np.zeros(int(frames / 24 * 16000), np.float32), "whisper": np.zeros((14, 5, 384), np.float16)})
    (root / "manifest.jsonl").write_text(json.dumps({"id": CID, "path": f"shard-00000/{CID}", "shard": 0,
                                                     "num_frames": frames, "fps": 24.0, "kind": "headshot"}) + "\n")
    return root / "shard-00000" / CID


def _rewrite_killed(root: Path, monkeypatch, where: str) -> None:
    """Write the clip again and die at ``where`` ("rename": before the new folder is renamed in; "cleanup": after it, before
    the earlier one is removed). A kill runs no clean-up: KeyboardInterrupt is raised past ``finish`` and nothing aborts."""
    w = ClipWriter(root / "shard-00000" / CID)
    for f in range(4):
        w.add_frame(np.full((16, 16, 3), 200 + f, np.uint8))
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def replace(src, dst):
        if where == "rename" and Path(src) == w.tmp:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    def rmtree(path, *a, **k):
        if where == "cleanup" and Path(path).name.startswith(".old"):
            raise KeyboardInterrupt
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(store.os, "replace", replace)
    monkeypatch.setattr(store.shutil, "rmtree", rmtree)
    try:
        with pytest.raises(KeyboardInterrupt):
            w.finish({"id": CID, "fps": 24.0, "kind": "headshot", "size": 16, "take": 2},
                     {"audio16k": np.zeros(2666, np.float32), "whisper": np.zeros((10, 5, 384), np.float16)})
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("where, take, frames, last", [("rename", 1, 6, 45), ("cleanup", 2, 4, 203)],
                         ids=["killed_before_the_rename_keeps_its_earlier_folder", "killed_after_the_rename_keeps_the_new_one"])
def test_a_clip_written_again_and_killed(tmp_path, monkeypatch, where, take, frames, last):
    """Killed before the new folder is renamed in, the earlier clip (take 1, 6 frames) is the clip; killed after it,
    before the earlier folder is removed, the new one (take 2, 4 frames). Either way training reads a whole clip, and
    the next prepare run's start leaves just that folder."""
    from trainer.data.store import check_clips_present, recover_clips

    root = tmp_path / "ds"
    _clip(root, take=1)
    _rewrite_killed(root, monkeypatch, where)
    entries = read_manifest(root)  # the training set as the dataset loader opens it
    clip = ClipReader(entries[0].path)
    assert clip.meta["take"] == take and clip.num_frames == frames and int(clip.frame(frames - 1)[0, 0, 0]) == last
    check_clips_present(entries)
    recover_clips(root)  # the next prepare run's start: one folder, the clip's, the staging / earlier one gone
    assert sorted(p.name for p in (root / "shard-00000").iterdir()) == [CID]
    assert ClipReader(root / "shard-00000" / CID).meta["take"] == take


def test_recovery_leaves_other_workers_clips_alone(tmp_path, monkeypatch):
    from trainer.data.store import recover_clips

    root = tmp_path / "ds"
    _clip(root, take=1)
    _rewrite_killed(root, monkeypatch, "rename")
    assert recover_clips(root, mine=lambda cid: cid != CID) == []  # another worker may be between its renames
    assert (root / "shard-00000" / f".old~{CID}" / "clip.json").is_file()


def test_prepare_fps_is_the_samplers_rule_in_its_words(tmp_path, capsys):
    from echomimic_lib.modes import check_frame_rate
    from trainer.cli import main
    from trainer.data.clean import PrepareConfig, check_options

    for bad in (0.0, 121.0, float("nan"), float("inf")):
        with pytest.raises(ValueError) as got:
            check_options(PrepareConfig(fps=bad))
        with pytest.raises(ValueError) as want:
            check_frame_rate(bad, "--fps")
        assert str(got.value) == str(want.value), got.value
    (tmp_path / "videos").mkdir()
    assert main(["prepare", str(tmp_path / "videos"), str(tmp_path / "ds"), "--fps", "0", "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: --fps 0.0: the frame rate must be a number between 1 and 120 (24 or 25 is typical)." in err, err
    assert "Traceback" not in err and not (tmp_path / "ds").exists()


def test_training_names_a_missing_clip_folder_before_it_starts(tmp_path):
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools

    root = tmp_path / "ds"
    shutil.rmtree(_clip(root, take=1))
    cfg = load_config(None, ["model.init=random", "model.arch=tiny", f"data.roots=[{root}]"], preset="v1_stage1")
    with pytest.raises(ConfigError) as err:
        build_pools(cfg)
    text = str(err.value)
    assert f"clip {CID} of {root / 'manifest.jsonl'}" in text and "is missing" in text, text
    assert f"echomimic-train prepare VIDEOS {root}` again" in text and "remove the clip's line" in text, text


class _Frame(torch.utils.data.Dataset):
    """One frame of a clip, read in a DataLoader worker as training reads it."""

    def __init__(self, path, frame=3, array=None):
        self.path, self.index, self.name = path, frame, array

    def __len__(self):
        return 1

    def __getitem__(self, i):
        clip = ClipReader(self.path)
        return torch.from_numpy(np.asarray(clip.array(self.name)) if self.name else clip.frame(self.index))


@pytest.mark.parametrize("damage, said", [("frames", "frame 3 of frames.bin is cut short"), ("whisper", "no whisper.npy"),
                                          ("index", "no frames.idx.npy"), ("meta", "clip.json")])
def test_a_damaged_clip_is_named_with_the_fix_from_a_loader_worker(tmp_path, damage, said):
    root = tmp_path / "ds"
    folder = _clip(root, take=1)
    if damage == "frames":  # a copy of the dataset cut short
        data = (folder / "frames.bin").read_bytes()
        (folder / "frames.bin").write_bytes(data[: len(data) // 2])
    elif damage == "whisper":
        (folder / "whisper.npy").unlink()
    elif damage == "index":
        (folder / "frames.idx.npy").unlink()
    else:
        (folder / "clip.json").write_text('{"id": "spk0')
    loader = torch.utils.data.DataLoader(_Frame(folder, array="whisper" if damage == "whisper" else None), num_workers=1)
    with pytest.raises(ConfigError) as err:
        next(iter(loader))
    text = str(err.value)
    assert text.startswith(f"{folder}: this prepared clip is damaged (") and said in text, text
    assert "Traceback" not in text and "DataLoader worker" not in text, text
    assert f"Delete the folder {folder} and run `echomimic-train prepare VIDEOS {root}` again" in text, text


def _prepare(inp: Path, out: Path) -> dict:
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset

    return prepare_dataset(inp, out, PrepareConfig(kind="full", size=64, min_seconds=0.5, max_seconds=1.0), None, progress=False)


def test_prepare_puts_back_a_cut_short_rewrite_and_redoes_a_clip_whose_folder_is_gone(tmp_path, caplog):
    inp, out = tmp_path / "videos", tmp_path / "ds"
    inp.mkdir()
    shutil.copy(DATA / "video" / "driving_a.mp4", inp / "talk.mp4")
    shutil.copy(DATA / "audio" / "echomimic_en.wav", inp / "talk.wav")
    assert _prepare(inp, out)["kept"] == 1
    folder = read_manifest(out)[0].path
    made = (folder / "clip.json").read_text()
    os.replace(folder, folder.with_name(f".old~{folder.name}"))  # a rewrite killed between its renames
    (folder.parent / "talk.partial").mkdir()  # and its staging folder
    assert _prepare(inp, out)["this_run"] == {"skipped (done before)": 1}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["talk"] and (folder / "clip.json").read_text() == made
    shutil.rmtree(folder)  # removed by hand: the status still says kept
    s = _prepare(inp, out)
    assert s["this_run"] == {"redone (clip folder missing)": 1, "kept": 1}, s["this_run"]
    assert "clip talk is prepared again: its clip folder" in caplog.text and "is missing" in caplog.text
    assert ClipReader(read_manifest(out)[0].path).num_frames == 25


def test_a_video_whose_clip_id_ends_in_partial_is_refused(tmp_path):
    from trainer.data.prepare import check_clip_ids

    (tmp_path / "talk.mp4").write_bytes(b"")
    (tmp_path / "talk.partial.mp4").write_bytes(b"")  # its folder would be talk's staging folder, deleted when talk is written
    with pytest.raises(ConfigError, match=r"talk.partial.mp4 would become clip 'talk.partial', a name prepare keeps"):
        check_clip_ids([tmp_path / "talk.mp4", tmp_path / "talk.partial.mp4"], tmp_path)


def test_recovery_keeps_a_clip_an_older_version_named_like_a_staging_folder(tmp_path):
    from trainer.data.store import recover_clips

    shard = tmp_path / "ds" / "shard-00000"
    for name in ("talk.partial", "walk.partial"):
        (shard / name).mkdir(parents=True)
        (shard / name / "clip.json").write_text("{}")
    (tmp_path / "ds" / "status").mkdir()
    (tmp_path / "ds" / "status" / "talk.partial.json").write_text('{"status": "ok"}')  # a kept clip of that name
    assert recover_clips(tmp_path / "ds") == [shard / "walk.partial"]
    assert sorted(p.name for p in shard.iterdir()) == ["talk.partial"]


def test_an_unreadable_status_file_is_named_and_the_manifest_kept(tmp_path):
    from trainer.data.prepare import finalize

    root = tmp_path / "ds"
    _clip(root, take=1)
    (root / "status").mkdir()
    (root / "status" / f"{CID}.json").write_text('{"id": "spk')  # a copy of the dataset cut short
    before = (root / "manifest.jsonl").read_text()
    with pytest.raises(ConfigError, match=rf"{CID}.json: unreadable status file .*delete it and run the same prepare"):
        finalize(root)
    assert (root / "manifest.jsonl").read_text() == before


def test_prepare_does_not_take_a_folder_with_a_status_folder_for_a_dataset(tmp_path, capsys):
    from trainer.cli import main
    from trainer.data.prepare import check_folders

    videos, out = tmp_path / "videos", tmp_path / "project"
    videos.mkdir()
    (videos / "talk.mp4").write_bytes(b"a user's video")
    (out / "status").mkdir(parents=True)  # the user's own folder named so
    (out / "manifest.jsonl").write_text('{"reference": "me.png", "audio": "talk.mp4"}\n')  # an `echomimic batch` manifest
    assert main(["prepare", str(videos), str(out), "--kind", "full", "-q"]) == 2
    err = capsys.readouterr().err
    assert "is a folder of other files (manifest.jsonl, status)" in err and "Traceback" not in err, err
    assert (out / "manifest.jsonl").read_text().startswith('{"reference"') and sorted(p.name for p in out.iterdir()) == [
        "manifest.jsonl", "status"]
    (out / "shard-00000").mkdir()  # a dataset an older version prepared (no prepare_config.json): resumed
    check_folders(videos, out)


def test_a_frame_past_the_clip_says_the_manifest_is_older_than_the_clip(tmp_path):
    root = tmp_path / "ds"
    folder = _clip(root, take=1, frames=6)  # e.g. written again from a shorter video; prepare stopped before its manifest
    clip = ClipReader(folder)
    assert int(clip.frame(5)[0, 0, 0]) == 45
    with pytest.raises(ConfigError, match=r"frame 6 asked of a clip of 6 frames .*manifest.jsonl is older than the clip.*"
                                          r"Run the same `echomimic-train prepare VIDEOS"):
        clip.frame(6)
