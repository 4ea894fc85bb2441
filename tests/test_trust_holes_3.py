"""Trust holes, third round: each test fails without its fix.

1. a torch.distributed.checkpoint ``.metadata`` index is refused when absurdly large, and its allowed calls spend the
   allow-list unpickler's budget (a few bytes may not build gigabytes);
2. ``echomimic-train prepare`` resumed: a clip whose video was replaced under the same clip id is prepared again;
3. a batch manifest over the size cap, with a gigantic line or a gigantic CSV cell, is refused with a clear message;
4. doctor's read of ComfyUI's ``extra_model_paths.yaml``: size cap and alias expansion ('billion laughs') guard.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from tests.test_audit_holes import _sharded_checkpoint

DATA = Path("/work/shared/data")


# 1. the sharded checkpoint's index ---------------------------------------------------------------------------------
def test_resume_check_refuses_an_index_over_the_cap_before_reading_it(tmp_path):
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint

    ckpt = _sharded_checkpoint(tmp_path)
    index = ckpt / "fsdp_0" / ".metadata"
    with open(index, "r+b") as f:  # a real index, grown (sparse) past the cap: it would load, but is not read
        f.truncate((64 << 20) + 1)
    with pytest.raises(UnsafeCheckpointError, match=r"bytes is not a torch.distributed.checkpoint index .*64 MiB"):
        check_checkpoint(ckpt)


def _size_bomb(items: int, calls: int) -> bytes:
    """An index-looking pickle: torch.Size(the same memoised list of ``items`` ints), ``calls`` times, kept in a list."""
    out = b"\x80\x02" + pickle.GLOBAL + b"torch\nSize\n" + pickle.BINPUT + b"\x00"
    out += pickle.EMPTY_LIST + pickle.BINPUT + b"\x01" + pickle.MARK + (pickle.BININT1 + b"\x01") * items + pickle.APPENDS
    out += pickle.POP + pickle.EMPTY_LIST + pickle.MARK
    out += (pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.TUPLE1 + pickle.REDUCE) * calls
    return out + pickle.APPENDS + pickle.STOP


def test_an_index_that_builds_far_more_than_it_holds_is_refused(tmp_path):
    from trainer.safe_resume import UnsafeCheckpointError, _DCPUnpickler, check_checkpoint

    small = _size_bomb(1000, 3)
    import io

    assert [len(s) for s in _DCPUnpickler(io.BytesIO(small)).load()] == [1000] * 3  # torch.Size still builds
    ckpt = _sharded_checkpoint(tmp_path)
    (ckpt / "fsdp_0" / ".metadata").write_bytes(_size_bomb(100_000, 200))  # 200 KB -> 20 M elements
    with pytest.raises(UnsafeCheckpointError, match="building budget"):
        check_checkpoint(ckpt)


def test_a_ranks_index_is_checked_as_an_index(tmp_path):
    """``__N.metadata`` (torch.distributed.checkpoint's per-rank index name) is read as an index: a real one passes,
    one that would run code is refused as such."""
    from tests.test_audit_holes import _call
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint

    ckpt = _sharded_checkpoint(tmp_path)
    (ckpt / "fsdp_0" / ".metadata").rename(ckpt / "fsdp_0" / "__0.metadata")
    assert "__0.metadata" in {p.name for p in check_checkpoint(ckpt)}
    (ckpt / "fsdp_0" / "__0.metadata").write_bytes(_call("os", "system", "true"))
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        check_checkpoint(ckpt)


def test_the_index_read_inside_load_state_is_capped_too(tmp_path, monkeypatch):
    """An index swapped after the check: torch's own read of it (through the shim) is refused by its size too."""
    from torch.distributed.checkpoint import filesystem

    from trainer import safe_resume

    ckpt = _sharded_checkpoint(tmp_path)
    index = ckpt / "fsdp_0" / ".metadata"
    monkeypatch.setattr(safe_resume, "MAX_DCP_METADATA_BYTES", index.stat().st_size - 1)
    with safe_resume.weights_only_loading(), open(index, "rb") as f:
        with pytest.raises(safe_resume.UnsafeCheckpointError, match="bytes is not a torch.distributed.checkpoint index"):
            filesystem.pickle.load(f)


# 2. prepare's resume --------------------------------------------------------------------------------------------------
def _prepare(inp, out):
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import prepare_dataset

    return prepare_dataset(inp, out, PrepareConfig(size=64, max_seconds=2.0, num_shards=2), None, progress=False)


def _small_video(path: Path, shade: int) -> None:
    from echomimic_lib.io.video_io import write_video

    write_video(path, np.full((6, 64, 64, 3), shade, np.uint8), 24.0)


def test_prepare_resume_redoes_a_clip_whose_video_was_replaced(tmp_path, caplog):
    from trainer.data.prepare import status_path
    from trainer.data.store import shard_dir, shard_of

    inp, out = tmp_path / "in", tmp_path / "ds"
    inp.mkdir()
    (inp / "talk.mp4").symlink_to(DATA / "video" / "driving_a.mp4")  # no audio: dropped at once (cheap)
    (inp / "other.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    assert _prepare(inp, out)["this_run"] == {"dropped": 2}
    stamp = json.loads(status_path(out, "talk").read_text())["source_stamp"]
    assert stamp["path"] == "talk.mp4" and stamp["size"] == (DATA / "video" / "driving_a.mp4").stat().st_size
    assert _prepare(inp, out)["this_run"] == {"skipped (done before)": 2}  # nothing changed: nothing redone

    (inp / "talk.mp4").unlink()
    _small_video(inp / "talk.mp4", 90)  # another video under the same clip id
    kept_before = shard_dir(out, shard_of("talk", 2)) / "talk"  # as if the old video had been kept
    kept_before.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="trainer.data.prepare"):
        s = _prepare(inp, out)
    assert s["this_run"] == {"redone (video changed)": 1, "dropped": 1, "skipped (done before)": 1}
    assert "clip talk is prepared again" in caplog.text and "the video was replaced" in caplog.text
    assert not kept_before.exists()  # the old video's clip is gone with its status

    (inp / "talk.mp4").rename(inp / "talk.mov")  # same clip id, another file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.data.prepare"):
        assert _prepare(inp, out)["this_run"]["redone (video changed)"] == 1
    assert "the clip is now talk.mov, its status is of talk.mp4" in caplog.text


def test_prepare_resume_trusts_status_files_of_an_older_version_and_says_so_once(tmp_path, caplog):
    from trainer.data.prepare import status_path

    inp, out = tmp_path / "in", tmp_path / "ds"
    inp.mkdir()
    for name in ("a", "b"):
        (inp / f"{name}.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    _prepare(inp, out)
    for name in ("a", "b"):  # as an older version wrote them
        rec = json.loads(status_path(out, name).read_text())
        del rec["source_stamp"]
        status_path(out, name).write_text(json.dumps(rec))
        (inp / f"{name}.mp4").unlink()
        _small_video(inp / f"{name}.mp4", 30)
    with caplog.at_level(logging.WARNING, logger="trainer.data.prepare"):
        assert _prepare(inp, out)["this_run"] == {"skipped (done before)": 2}
    assert caplog.text.count("written by an older version") == 1


# 3. batch manifests ---------------------------------------------------------------------------------------------------
def _rows(n: int) -> str:
    return "reference,audio\n" + "".join(f"face{i}.png,talk{i}.wav\n" for i in range(n))


def test_a_manifest_over_the_size_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from echomimic_lib.jobs.batch import manifest_text
    from echomimic_lib.jobs.batch.manifest import read_manifest

    path = tmp_path / "jobs.csv"
    path.write_text(_rows(100))
    monkeypatch.setattr(manifest_text, "MAX_MANIFEST_BYTES", 1024)
    with pytest.raises(EchoMimicError, match=r"jobs.csv: the manifest is 0 MiB, over the 0 MiB .*split the manifest"):
        read_manifest(path, tmp_path / "out")


def test_a_manifest_line_over_the_cap_is_refused_naming_it(tmp_path):
    from echomimic_lib.jobs.batch.manifest import read_manifest

    path = tmp_path / "jobs.jsonl"
    row = {"reference": "face.png", "audio": "talk.wav"}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "prompt": "x" * (1 << 20)}) + "\n")
    with pytest.raises(EchoMimicError, match=r"jobs.jsonl: line 2 is longer than 1 MiB .*split the manifest"):
        read_manifest(path, tmp_path / "out")


def test_long_manifests_of_short_lines_still_read(tmp_path):
    """Over a MiB in all, with \\n or old Macs' \\r line ends: every line is short, nothing is refused for its size."""
    from echomimic_lib.jobs.batch.manifest_text import read_text

    text = _rows(60_000)
    assert len(text) > 1 << 20
    for end in ("\n", "\r"):
        path = tmp_path / "jobs.csv"
        path.write_text(text.replace("\n", end), newline="")
        assert read_text(path).getvalue().count(end) == 60_001


def test_a_csv_cell_over_the_field_limit_is_an_error_not_a_traceback(tmp_path):
    from echomimic_lib.jobs.batch.manifest import read_manifest

    path = tmp_path / "jobs.csv"
    path.write_text('reference,audio,prompt\nface.png,talk.wav,"an open quote\n' + "more words\n" * 20_000)
    with pytest.raises(EchoMimicError, match=r"jobs.csv: line \d+: field larger than field limit .*close the quote"):
        read_manifest(path, tmp_path / "out")


# 4. doctor and extra_model_paths.yaml ---------------------------------------------------------------------------------
def _apply(path: Path):
    from echomimic_lib.jobs.doctor.comfy_paths import ComfyFolders, apply_file

    folders = ComfyFolders(path.parent / "models")
    apply_file(folders, path)
    return folders


def test_doctor_refuses_extra_model_paths_whose_aliases_expand_hugely(tmp_path, monkeypatch):
    from echomimic_lib.jobs.doctor import comfy_paths

    many = "\n".join(f"models/dir{i}" for i in range(200))  # ~3 KB of paths, aliased by every key
    keys = "".join(f"  k{i}: *p\n" for i in range(1, 400))
    path = tmp_path / "extra_model_paths.yaml"
    path.write_text("a:\n  base_path: /x\n  k0: &p |\n" + "".join(f"    {line}\n" for line in many.split("\n")) + keys)
    assert len(_apply(path).roots("k0")) == 200  # as it is, every key gets the 200 folders: 80,000 of them
    monkeypatch.setattr(comfy_paths, "MAX_YAML_CHARS", 100_000)
    folders = _apply(path)
    assert folders.roots("k0") == [] and any("aliases (*name) expand" in p for p in folders.problems)


def test_doctor_refuses_an_oversized_extra_model_paths_before_reading_it(tmp_path, monkeypatch):
    from echomimic_lib.jobs.doctor import comfy_paths

    path = tmp_path / "extra_model_paths.yaml"
    path.write_text("a:\n  base_path: /x\n  mykind: models/mine\n" + "# padding\n" * 200)
    monkeypatch.setattr(comfy_paths, "MAX_YAML_BYTES", 1024)
    folders = _apply(path)
    assert folders.roots("mykind") == [] and any("is not a model-paths file" in p for p in folders.problems)


def test_the_yaml_guard_is_one_shared_function():
    from echomimic_lib.io.yaml_file import expanded_size_over
    from trainer import config_checks

    assert config_checks._expanded_size_over is expanded_size_over
    laughs = ["x" * 10]
    for _ in range(5):  # 9**5 copies of the list: about 125,000 values
        laughs = [laughs] * 9
    assert expanded_size_over(laughs, 1_000_000) is False and expanded_size_over(laughs, 100_000) is True
    assert expanded_size_over(["x" * 1000] * 50, 1000, max_chars=40_000) is True
