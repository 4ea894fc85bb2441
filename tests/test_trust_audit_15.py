"""Trust audit 15 (the code of the last two sessions): each test fails without its fix.

1. a user's ``.npz`` that is really a ``.npy`` whose header declares gigabytes: refused by its header (a clear error,
   not numpy's MemoryError escaping the landmark reader), as a zip member's header already was;
2. JSON nested deeper than Python's parser goes (a RecursionError, reported as "a bug in EchoMimic"): a batch
   manifest's row, a landmark ``.json`` and ``echomimic queue``'s workflow are refused with a clear error;
3. ``echomimic queue`` over several servers reads its workflow as the one-server run does: a missing, non-JSON or
   wrongly shaped file is a clear error, not a traceback;
4. the one-server queue's workflow nested too deeply; the curl command printed
   for prompts still on the server quotes a prompt id for the shell; ``read_speech`` stops decoding at the longest
   video's audio when the header states no duration.
"""
from __future__ import annotations

import json
import math
import shlex
import wave
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError

DEEP = 50_000  # brackets: far past Python's recursion limit (its JSON parser raises RecursionError)


def _deep_list(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def _npy_claiming(path: Path, shape, descr: str = "<f8") -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)
    return path


# 1. a .npy under an .npz name ----------------------------------------------------------------------------------------
def test_a_npy_named_npz_declaring_more_than_it_holds_is_refused_by_its_header(tmp_path):
    from echomimic_lib.io.npz_file import check_npz

    bomb = _npy_claiming(tmp_path / "lmks.npz", (2 ** 37,))  # 1 TiB declared, 64 bytes held
    with pytest.raises(EchoMimicError, match=r"not an \.npz archive.*declares 1\.0 TiB.*holds 64 bytes.*Do it again"):
        check_npz(bomb, "Do it again.")


def test_the_landmark_reader_says_so_instead_of_numpys_memory_error(tmp_path):
    from echomimic_lib.landmarks.io import load_sequence

    bomb = _npy_claiming(tmp_path / "lmks.npz", (2 ** 37,))
    with pytest.raises(EchoMimicError, match=r"declares .* but the file holds .*echomimic landmarks"):
        load_sequence(bomb)


def test_a_real_npy_named_npz_is_still_read_by_numpy(tmp_path):
    from echomimic_lib.io.npz_file import check_npz, open_npz

    path = tmp_path / "plain.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.arange(12, dtype=np.float32).reshape(3, 4))
    check_npz(path, "fix")  # what it declares is there: numpy reads it as before
    assert open_npz(path, "fix").shape == (3, 4)
    with pytest.raises(EchoMimicError, match="over the 16 bytes"):
        check_npz(path, "fix", limit=16)


def test_a_npy_of_objects_named_npz_is_refused_as_a_pickle(tmp_path):
    from echomimic_lib.errors import UnsafeFileError
    from echomimic_lib.io.npz_file import check_npz

    path = tmp_path / "objects.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="Python objects"):
        check_npz(path, "fix")


# 2. JSON nested too deeply --------------------------------------------------------------------------------------------
def test_a_manifest_row_nested_too_deeply_is_a_row_error_not_a_crash(tmp_path):
    from echomimic_lib.jobs.batch.manifest import read_manifest

    m = tmp_path / "jobs.jsonl"
    m.write_text('{"reference": "a.png", "audio": ' + _deep_list() + "}\n", encoding="utf-8")
    with pytest.raises(EchoMimicError, match=r"line 1.*not a manifest row: nested too deeply"):
        read_manifest(m, tmp_path / "out")


def test_a_landmark_json_nested_too_deeply_is_a_clear_error(tmp_path):
    from echomimic_lib.landmarks.io import load_sequence

    f = tmp_path / "lmks.json"
    f.write_text('{"format": "x", "lmks": ' + _deep_list() + "}", encoding="utf-8")
    with pytest.raises(EchoMimicError, match="nested too deeply"):
        load_sequence(f)


# 3. the several-servers queue's workflow -----------------------------------------------------------------------------
@pytest.mark.parametrize("text, said", [
    (None, "workflow not found"),
    ("not json", "not a readable JSON workflow"),
    ('{"1": 5}', "not an API-format workflow"),
    ('{"1": ' + _deep_list() + "}", "nested too deeply"),
])
def test_queue_over_several_servers_reads_its_workflow_with_clear_errors(tmp_path, capsys, text, said):
    from echomimic_lib.jobs import queue_client

    (tmp_path / "p").mkdir()
    (tmp_path / "a").mkdir()
    wf = tmp_path / "wf.json"
    if text is not None:
        wf.write_text(text, encoding="utf-8")
    rc = queue_client.main([str(wf), "--portraits", str(tmp_path / "p"), "--audios", str(tmp_path / "a"),
                            "--server", "http://127.0.0.1:9", "--server", "http://127.0.0.1:10",
                            "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and said in err and "Traceback" not in err


# 4. holes in files other helpers own (the fix is described in the report) ------------------------------------------
def test_queue_one_server_workflow_nested_too_deeply_is_a_queue_error(tmp_path):
    from echomimic_lib.jobs.queue_client import QueueError, queue_folder

    wf = tmp_path / "wf.json"
    wf.write_text('{"1": ' + _deep_list() + "}", encoding="utf-8")
    with pytest.raises(QueueError, match="not a readable JSON workflow"):
        queue_folder(wf, tmp_path, tmp_path, "http://127.0.0.1:9")


def test_the_printed_curl_command_quotes_a_prompt_id_for_the_shell():
    from echomimic_lib.jobs.queue_replies import still_on_server

    hostile = "x'; touch /tmp/owned; echo '"  # from a tampered .echomimic_queue.json, or a server's reply
    said = still_on_server("http://127.0.0.1:8188", [hostile])
    command = said[said.index("curl -X POST"):said.index(" for the queued ones")]
    words = shlex.split(command)
    assert json.loads(words[words.index("-d") + 1]) == {"delete": [hostile]}
    assert "touch" not in words


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * math.pi * 220 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def test_read_speech_stops_decoding_at_the_longest_videos_audio(tmp_path, monkeypatch):
    from echomimic_lib.io import audio_file
    from echomimic_lib.jobs import speech_input, speech_length

    audio = _wav(tmp_path / "long.wav", 20.0)
    monkeypatch.setattr(speech_length, "MAX_LENGTH", 50)  # 2 s at 25 fps
    monkeypatch.setattr(speech_length, "header_seconds", lambda p: None)  # the header says nothing (or lies)
    decoded = [0]
    blocks = audio_file.audio_blocks

    def counting(path):
        for sr, out in blocks(path):
            decoded[0] += out.samples
            yield sr, out

    monkeypatch.setattr(audio_file, "audio_blocks", counting)
    with pytest.raises(EchoMimicError, match="more than the 50"):
        speech_input.read_speech(audio, fps=25.0)
    assert decoded[0] < 5 * 16000  # a few seconds past the bound, never the whole 20 s track


def test_a_results_file_with_foreign_lines_is_read_past_them(tmp_path):
    """``results.jsonl`` (the batch's resume record): a line nested too deeply or naming its row with a list is not
    the batch's; it is skipped like a torn line, never a RecursionError / 'unhashable type' that stops the batch."""
    from echomimic_lib.jobs.batch.results import FILE_NAME, read_results

    lines = ['{"name": "a", "status": "ok"}', '{"name": ' + _deep_list() + "}", '{"name": ["b"], "status": "ok"}',
             '{"name": {"x": 1}}', '{"name": "c", "status": "failed"}']
    (tmp_path / FILE_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert {k: v["status"] for k, v in read_results(tmp_path).items()} == {"a": "ok", "c": "failed"}


# 5. a prepared dataset from elsewhere (trainer/data/store.py) --------------------------------------------------------
def _prepared_clip(tmp_path, offsets) -> Path:
    folder = tmp_path / "ds" / "shard-00000" / "c"
    folder.mkdir(parents=True)
    (folder / "clip.json").write_text(json.dumps({"id": "c", "num_frames": len(offsets) - 1, "fps": 25.0}))
    np.save(folder / "frames.idx.npy", np.asarray(offsets, np.int64))
    (folder / "frames.bin").write_bytes(b"\xff\xd8" + b"\0" * 4094)
    return folder


@pytest.mark.parametrize("offsets", [[0, 2 ** 41], [4000, 10]], ids=["2-TiB-frame", "negative-length"])
def test_a_frame_index_placing_a_frame_beyond_any_jpeg_is_a_damaged_clip(tmp_path, offsets):
    """A shared dataset's frames.idx.npy: ``read(b - a)`` would allocate 2 TiB (or, for a negative count, read the
    whole frames.bin); the clip is named damaged from the index alone."""
    from trainer.data.store import ClipReader, DamagedClipError

    reader = ClipReader(_prepared_clip(tmp_path, offsets))
    with pytest.raises(DamagedClipError, match=r"frames\.idx\.npy places frame 0 at bytes .*no JPEG frame"):
        reader.frame(0)


@pytest.mark.parametrize("line", ['{"id": "c", "path": "shard-00000/c", "sh', "[1, 2]", '{"id": "c", "path": "x"}',
                                  '{"id": "c", "path": "x", "shard": 0, "num_frames": "many", "fps": 25}',
                                  '{"id": ' + _deep_list() + "}"],
                         ids=["cut-short", "a-list", "no-counts", "text-count", "nested"])
def test_a_dataset_manifest_line_not_written_by_prepare_is_named_with_the_fix(tmp_path, line):
    from trainer.config import ConfigError
    from trainer.data.store import read_manifest

    root = tmp_path / "ds"
    root.mkdir()
    good = json.dumps({"id": "a", "path": "shard-00000/a", "shard": 0, "num_frames": 4, "fps": 25.0})
    (root / "manifest.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=r"manifest\.jsonl line 2 is not a clip row .*echomimic-train prepare"):
        read_manifest(root)


# 6. an .npz whose members are not what their names say -------------------------------------------------------------
def _npy_bytes(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("member, data", [("lmks", b"hello world"), ("lmks.npy", _npy_bytes(np.array("text")))],
                         ids=["a-text-member", "a-string-array"])
def test_a_landmark_npz_of_other_members_is_a_clear_error(tmp_path, member, data):
    """A zip holding our ``meta`` and, under the landmarks' name, text (or an array of text): numpy's ValueError
    ("could not convert string to float") escaped as a bug report; it is the file that is wrong."""
    import zipfile

    from echomimic_lib.landmarks.io import FORMAT, load_driver_sequence

    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.npy", _npy_bytes(np.array(json.dumps({"format": FORMAT, "image_size": [512, 512]}))))
        z.writestr(member, data)
    with pytest.raises(EchoMimicError, match=r"not a landmark file written by this package .*echomimic landmarks"):
        load_driver_sequence(path)


def _pose_npz(path: Path, meta: dict, arrays: dict) -> Path:
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


@pytest.mark.parametrize("change", [{"fps": None}, {"canvas_size": 5}, {"fps": "fast"}, {"version": "abc"}, "text-arrays"],
                         ids=["no-fps", "canvas-a-number", "fps-text", "version-text", "text-arrays"])
def test_a_pose_npz_with_fields_of_another_kind_is_a_clear_error(tmp_path, change):
    """The Hand-Pose Sequence Loader's ``.npz`` (input/echomimic_poses/ takes uploads): a KeyError / TypeError /
    ValueError from its fields came out raw (``'fps'``, ``'int' object is not iterable``)."""
    from echomimic_lib.pose.io import ARRAY_FIELDS, FORMAT_NAME, load_pose

    meta = {"format": FORMAT_NAME, "version": 1, "fps": 25, "canvas_size": [768, 768]}
    arrays = {n: np.zeros((2, 1)) for n in ARRAY_FIELDS}
    if change == "text-arrays":
        arrays = {n: np.array(["x", "y"]) for n in ARRAY_FIELDS}
    else:
        meta.update(change)
        meta = {k: v for k, v in meta.items() if v is not None}
    path = _pose_npz(tmp_path / "pose.npz", meta, arrays)
    with pytest.raises(EchoMimicError, match=r"not an EchoMimic pose sequence .*echomimic poses VIDEO"):
        load_pose(path)


# 7. echomimic-train export --force over an earlier export (trainer/export.py) ----------------------------------------
def _failing_copies(monkeypatch, after: int):
    """shutil's file copies: the first ``after`` go through, the next writes half a file and the disk is full."""
    import errno
    import shutil

    real, calls = shutil.copyfile, [0]

    def copyfile(src, dst, *a, **k):
        calls[0] += 1
        if calls[0] > after:
            Path(dst).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_export_force_keeps_the_earlier_vae_folder_when_the_copy_fails(tmp_path, monkeypatch):
    from trainer.export import _place

    src, dst = tmp_path / "vae", tmp_path / "dest" / "sd-vae-ft-mse"
    src.mkdir()
    for name in ("config.json", "a.bin", "b.bin"):
        (src / name).write_text("new " + name)
    dst.mkdir(parents=True)
    (dst / "config.json").write_text("old")
    _failing_copies(monkeypatch, after=1)
    with pytest.raises(OSError):
        _place(src, dst, link=False)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json"] and (dst / "config.json").read_text() == "old"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["sd-vae-ft-mse"]  # no half copy left beside it
    monkeypatch.undo()
    _place(src, dst, link=False)  # and when it succeeds, the new one is in place whole
    assert sorted(p.name for p in dst.iterdir()) == ["a.bin", "b.bin", "config.json"]
    assert (dst / "a.bin").read_text() == "new a.bin" and sorted(p.name for p in dst.parent.iterdir()) == ["sd-vae-ft-mse"]


def test_export_force_keeps_the_earlier_whisper_file_when_the_copy_fails(tmp_path, monkeypatch):
    from trainer.export import _place

    src, dst = tmp_path / "whisper_tiny.pt", tmp_path / "dest" / "audio_processor" / "whisper_tiny.pt"
    src.write_bytes(b"new weights")
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"old weights")
    _failing_copies(monkeypatch, after=0)
    with pytest.raises(OSError):
        _place(src, dst, link=False)
    assert dst.read_bytes() == b"old weights" and [p.name for p in dst.parent.iterdir()] == ["whisper_tiny.pt"]


def test_export_never_replaces_a_pipe_where_a_file_goes(tmp_path):
    import os

    from trainer.config import ConfigError
    from trainer.export import _place

    src, dst = tmp_path / "whisper_tiny.pt", tmp_path / "dest" / "whisper_tiny.pt"
    src.write_bytes(b"weights")
    dst.parent.mkdir()
    os.mkfifo(dst)
    with pytest.raises(ConfigError, match="device, pipe or socket"):
        _place(src, dst, link=False)
    assert dst.is_fifo()


def test_a_queue_state_nested_too_deeply_is_a_clear_error_naming_the_file(tmp_path):
    from echomimic_lib.jobs.queue_state import QueueError, read_state

    f = tmp_path / ".echomimic_queue.json"
    f.write_text('{"servers": ' + _deep_list() + "}", encoding="utf-8")
    with pytest.raises(QueueError, match=r"\.echomimic_queue\.json: the queue state kept for --resume cannot be read"):
        read_state(f)


def test_a_servers_answer_nested_too_deeply_is_explained_not_a_crash():
    from echomimic_lib.jobs.queue_replies import explain

    body = '{"error": ' + _deep_list() + "}"
    assert explain(body).startswith('{"error": [[[')


def test_a_frame_index_whose_header_declares_a_terabyte_is_a_damaged_clip(tmp_path):
    """frames.idx.npy was read whole: numpy allocates what its header declares (1 TiB: a MemoryError from a DataLoader
    worker); it is mapped, so a header declaring more than the file holds is refused as damaged."""
    from trainer.data.store import ClipReader, DamagedClipError

    folder = _prepared_clip(tmp_path, [0, 10])
    _npy_claiming(folder / "frames.idx.npy", (2 ** 37,), "<i8")
    with pytest.raises(DamagedClipError, match=r"frames\.idx\.npy is unreadable"):
        ClipReader(folder)


def test_a_frame_index_of_text_is_a_damaged_clip(tmp_path):
    from trainer.data.store import ClipReader, DamagedClipError

    folder = _prepared_clip(tmp_path, [0, 10])
    np.save(folder / "frames.idx.npy", np.array(["0", "10"]))
    with pytest.raises(DamagedClipError, match=r"frames\.idx\.npy is unreadable"):
        ClipReader(folder)
