"""One reader for the JSON files the project and its users write (echomimic_lib.io.json_meta.read_json / loads_json):
a damaged file, one nested past what Python's parser reads, one that is not UTF-8, of the wrong top-level kind, a
folder or a pipe where the file belongs, or an empty file is one clear error naming the file, the problem and the fix,
of the class the caller picks. Then, per caller moved onto it, the damaged file that used to stop it with a raw
RecursionError / UnicodeDecodeError / IsADirectoryError / AttributeError."""
from __future__ import annotations

import json
import os
import sys

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.json_file import loads_json, read_json

DEEP = "[" * 100_000 + "]" * 100_000


class Picked(EchoMimicError):
    pass


def _read(path, **kw):
    return read_json(path, what="not a test file", fix="write it again", error=Picked, **kw)


# the reader -----------------------------------------------------------------------------------------------------------
def test_a_valid_file_is_read_as_json_reads_it(tmp_path):
    f = tmp_path / "a.json"
    doc = {"a": [1, 2.5, None, True], "b": "ü"}
    f.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    assert _read(f, expect=dict) == doc
    assert _read(f, max_bytes=f.stat().st_size) == doc


@pytest.mark.parametrize("data, problem", [
    (b'{"a": 1,', "not valid JSON: Expecting property name enclosed in double quotes at line 1, column 9"),
    (DEEP.encode(), "nested too deeply to be read"),
    (b'{"a": "\xff"}', "not UTF-8 text: byte 0xff at position 7"),
    (b"", "empty"),
    (b"  \n", "empty"),
    (b'\xef\xbb\xbf{"a": 1}', "byte-order mark"),
    (b"[1, 2]", "it holds a list [...] where an object {...} belongs"),
], ids=["damaged", "deep", "not utf-8", "empty", "blank", "bom", "wrong top type"])
def test_a_bad_file_is_one_clear_error_of_the_callers_class(tmp_path, data, problem):
    f = tmp_path / "bad.json"
    f.write_bytes(data)
    with pytest.raises(Picked) as got:
        _read(f, expect=dict)
    msg = str(got.value)
    assert msg.startswith(f"{f}: not a test file (") and problem in msg and msg.endswith("; write it again"), msg


def test_an_empty_file_can_stand_for_a_value(tmp_path):
    f = tmp_path / "e.json"
    f.write_text(" \n")
    assert _read(f, empty={}) == {}


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(Picked, match=r"not a test file \(it is a folder, not a file\); write it again"):
        _read(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(Picked, match="not a regular file but a pipe"):
        _read(fifo)  # before: open() blocked until something wrote to the pipe


def test_a_file_over_the_size_is_refused_before_it_is_read(tmp_path):
    f = tmp_path / "big.json"
    f.write_text('{"pad": "' + "x" * 2000 + '"}')
    with pytest.raises(Picked, match=r"\(2011 bytes, over the 1000 one may be\)"):
        _read(f, max_bytes=1000)


def test_a_missing_file_says_what_the_caller_says_or_the_system_refusal(tmp_path):
    with pytest.raises(Picked, match="^gone$"):
        _read(tmp_path / "no.json", missing="gone")
    with pytest.raises(Picked, match=r"cannot read .*no\.json: no such file or folder; check the path"):
        _read(tmp_path / "no.json")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="permissions are not enforced here")
def test_a_file_the_system_refuses_is_said_as_os_errors_say_it(tmp_path):
    f = tmp_path / "locked.json"
    f.write_text("{}")
    f.chmod(0)
    try:
        with pytest.raises(Picked, match=r"cannot read .*locked\.json: permission denied; check the permissions"):
            _read(f)
    finally:
        f.chmod(0o600)


def test_loads_json_names_where_the_text_came_from():
    assert loads_json(b'{"a": 1}', "http://x/prompt", expect=dict) == {"a": 1}
    with pytest.raises(Picked, match=r"^http://x/prompt: not JSON \(nested too deeply to be read\); is it ComfyUI\?$"):
        loads_json(DEEP, "http://x/prompt", "not JSON", "is it ComfyUI?", Picked)
    with pytest.raises(Picked, match=r"\(it holds a number where an object \{\.\.\.\} or a list \[\.\.\.\] belongs\)"):
        loads_json("5", "here", error=Picked, expect=(dict, list))


# the callers moved onto it ----------------------------------------------------------------------------------------------
def test_a_landmark_json_of_another_kind_is_a_clear_error(tmp_path):
    from echomimic_lib.landmarks.io import load_sequence

    f = tmp_path / "lmks.json"
    f.write_text("[1, 2]")
    with pytest.raises(EchoMimicError, match=r"not a landmark file written by this package \(it holds a list"):
        load_sequence(f)  # before: AttributeError 'list' object has no attribute 'get'


def test_a_clip_json_nested_too_deeply_is_a_damaged_clip(tmp_path):
    from trainer.data.store import CLIP_META, ClipReader, DamagedClipError

    (tmp_path / CLIP_META).write_text(DEEP)
    with pytest.raises(DamagedClipError, match=r"clip\.json is unreadable: nested too deeply"):
        ClipReader(tmp_path)  # before: RecursionError


def test_a_status_file_nested_too_deeply_is_a_reason_not_a_crash(tmp_path):
    from trainer.data.status import clip_missing, source_changed

    s = tmp_path / "c.json"
    s.write_text(DEEP)
    assert "unreadable" in source_changed(s, {"path": "c.mp4", "size": 1}, [])  # before: RecursionError
    assert clip_missing(s, tmp_path) is None


@pytest.mark.parametrize("bad", ["deep", "folder"])
def test_a_captions_file_nested_too_deeply_or_a_folder_is_a_config_error(tmp_path, bad):
    from trainer.config import ConfigError
    from trainer.v3.windows import read_captions

    p = tmp_path / "captions.json"
    p.mkdir() if bad == "folder" else p.write_text(DEEP)
    with pytest.raises(ConfigError, match=rf"data\.captions {p}: not a JSON file"):
        read_captions(str(p))  # before: RecursionError / IsADirectoryError


def test_a_results_line_not_utf8_is_skipped_like_a_torn_line(tmp_path):
    from echomimic_lib.jobs.batch.results import FILE_NAME, read_results

    (tmp_path / FILE_NAME).write_bytes(b'{"name": "a", "status": "ok"}\n\xff\xfe garbage\n{"name": "b"}\n[1]\n')
    assert sorted(read_results(tmp_path)) == ["a", "b"]  # before: UnicodeDecodeError stopped the batch


@pytest.mark.parametrize("content", [DEEP, "[1, 2]"], ids=["deep", "a list"])
def test_a_damaged_batch_lock_is_said_as_not_written_yet(tmp_path, content):
    from echomimic_lib.jobs.batch.lock import _holder

    f = tmp_path / "lock"
    f.write_text(" " + content)  # (Windows reads from byte 1)
    assert _holder(f) == "(its details are not written yet)"  # before: RecursionError / AttributeError


def test_a_status_entry_that_is_a_folder_stops_finalize_with_a_config_error(tmp_path):
    from trainer.config import ConfigError
    from trainer.data.prepare import finalize

    (tmp_path / "status" / "x.json").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"x\.json: unreadable status file \(it is a folder, not a file\); delete it"):
        finalize(tmp_path)  # before: IsADirectoryError


def test_a_queue_state_not_utf8_is_a_queue_error_and_a_blank_one_is_empty(tmp_path):
    from echomimic_lib.jobs.queue_replies import QueueError
    from echomimic_lib.jobs.queue_state import read_state

    s = tmp_path / "state.json"
    s.write_bytes(b'{"servers": "\xff"}')
    with pytest.raises(QueueError, match=r"the queue state kept for --resume cannot be read \(not UTF-8 text"):
        read_state(s)
    s.write_text("")
    assert read_state(s) == {"servers": {}, "runs": {}}


def test_a_server_reply_nested_too_deeply_is_explained_or_a_queue_error(monkeypatch):
    from echomimic_lib.jobs import queue_client
    from echomimic_lib.jobs.queue_replies import explain

    assert explain(DEEP[:200]) == DEEP[:200]  # shown as it came (cut), never a crash

    class Reply:
        headers = {}

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(queue_client.Deadline, "open", lambda self, req, timeout: Reply())  # (every request opens so)
    monkeypatch.setattr(queue_client, "_read_capped", lambda resp, url: DEEP.encode())
    with pytest.raises(queue_client.QueueError, match=r"http://h:1/x: the server answered with something that is not "
                                                      r"JSON .*nested too deeply.*ComfyUI's address"):
        queue_client._request("http://h:1/x")
