"""``animate --version v3-flash --resumable``: a long clip keeps each finished chunk; the same request run again writes the
kept chunks and generates only the rest, to the same frames as a render that never stopped; another request's state,
or a damaged one, is never used. Tiny V3 set, chunks shrunk to 9 frames (overlap 2): 21 frames are 3 chunks."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from echomimic_lib.io.audio_file import read_audio
from tests._media import write_wav

TOTAL = 21  # chunks start at 0, 7, 14: three chunks of 7 kept frames each


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory, shared_data):
    from echomimic_lib.jobs.animate_v3 import load_v3, model_files
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    d = tmp_path_factory.mktemp("v3_resume")
    folder = write_tiny_v3(d / "v3-flash")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(1.0 * sr)], sr)
    models = load_v3(model_files(folder), torch.device("cpu"), torch.float32)
    return {"dir": d, "folder": folder, "ref": shared_data / "images" / "portrait_a.png", "models": models, "refs": {}}


@pytest.fixture
def small_chunks(monkeypatch):
    from echomimic_lib.pipeline.wan import long

    monkeypatch.setattr(long, "CHUNK", 9)
    monkeypatch.setattr(long, "OVERLAP", 2)


def _render(env, out, monkeypatch, *, mode="reanchor", seed=1, resumable=True, stop_after=None):
    """(blocks handed to on_frames, generate calls, summary or None when stopped) of one render."""
    from echomimic_lib.jobs.animate_v3 import render_v3
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3
    from echomimic_lib.pipeline.wan import long, sampler

    calls, real = [], sampler.generate  # chunks: long.generate; a one-shot clip: sampler.generate
    for module in (long, sampler):
        monkeypatch.setattr(module, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    req = V3Request(reference=str(env["ref"]), audio=str(env["dir"] / "speech.wav"), output=str(out),
                    models=str(env["folder"]), steps=2, size=(32, 32), length=TOTAL, seed=seed, long_mode=mode,
                    resumable=resumable)
    plan = plan_v3(req)
    assert plan.frames == TOTAL
    blocks = []

    def progress(done, total):
        if stop_after is not None and done >= stop_after:
            raise Stop

    try:
        summary = render_v3(plan, env["models"], progress, on_frames=lambda b: blocks.append(b.copy()))
    except Stop:
        summary = None
    for module in (long, sampler):
        monkeypatch.setattr(module, "generate", real)
    return blocks, len(calls), summary


def _uninterrupted(env, monkeypatch, mode="reanchor", seed=1) -> np.ndarray:
    key = (mode, seed)
    if key not in env["refs"]:
        blocks, calls, _ = _render(env, env["dir"] / f"plain_{mode}_{seed}.mp4", monkeypatch, mode=mode, seed=seed,
                                   resumable=False)
        assert calls == 3 and [len(b) for b in blocks] == [7, 7, 7]
        assert not (env["dir"] / f"plain_{mode}_{seed}.mp4.resume-v3").exists()  # without --resumable nothing is kept
        env["refs"][key] = np.concatenate(blocks)
    return env["refs"][key]


def _state(out):
    return out.with_name(out.name + ".resume-v3")


def _stopped_state(env, tmp_path, monkeypatch, mode="reanchor", seed=1):
    """A render stopped after its second chunk: its output name and state folder (made once, copied for each test:
    the output's name is not part of the fingerprint)."""
    key = ("stopped", mode, seed)
    if key not in env["refs"]:
        first = env["dir"] / f"stopped_{mode}_{seed}.mp4"
        blocks, calls, summary = _render(env, first, monkeypatch, mode=mode, seed=seed, stop_after=14)
        assert summary is None and calls == 2 and not first.exists()
        meta = json.loads((_state(first) / "state.json").read_text())
        assert meta["chunks_done"] == 2 and meta["chunks"] == 3
        assert sorted(p.name for p in _state(first).iterdir()) == ["carry_00001.npz", "chunk_00000.npy", "chunk_00001.npy",
                                                                   "state.json"]
        env["refs"][key] = _state(first)
    out = tmp_path / f"stopped_{mode}_{seed}.mp4"
    shutil.copytree(env["refs"][key], _state(out))
    return out


@pytest.mark.parametrize("mode", ["reanchor", "continue"])
def test_a_stopped_render_goes_on_with_the_next_chunk_to_the_same_frames(env, tmp_path, monkeypatch, small_chunks, mode):
    """Both long modes (``continue`` carries the last frames into the next chunk): stopped after chunk 2, the same request
    writes chunks 1-2 from the state and generates chunk 3 only; the frames equal a render that never stopped."""
    want = _uninterrupted(env, monkeypatch, mode)
    out = _stopped_state(env, tmp_path, monkeypatch, mode)
    kept = np.load(_state(out) / "chunk_00001.npy")
    assert np.array_equal(kept, want[7:14])
    blocks, calls, summary = _render(env, out, monkeypatch, mode=mode)
    assert calls == 1 and summary["resumed_after_chunk"] == 2 and summary["frames"] == TOTAL
    assert [len(b) for b in blocks] == [7, 7, 7] and np.array_equal(np.concatenate(blocks), want)
    assert out.is_file() and not _state(out).exists()
    import av

    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == TOTAL


def test_the_modes_differ_in_what_they_carry(env, monkeypatch, small_chunks):
    """(So the test above covers both ways a chunk begins: ``continue`` starts chunk 2 from chunk 1's frames.)"""
    a, b = _uninterrupted(env, monkeypatch, "reanchor"), _uninterrupted(env, monkeypatch, "continue")
    assert np.array_equal(a[:7], b[:7]) and not np.array_equal(a[7:], b[7:])


def test_another_requests_state_is_ignored_with_a_warning_and_replaced(env, tmp_path, monkeypatch, small_chunks, caplog):
    out = _stopped_state(env, tmp_path, monkeypatch, seed=1)
    want = _uninterrupted(env, monkeypatch, seed=2)
    with caplog.at_level(logging.WARNING):
        blocks, calls, summary = _render(env, out, monkeypatch, seed=2, stop_after=7)  # another seed; stopped after chunk 1
    assert "holds the chunks of another render" in caplog.text
    assert calls == 1 and np.array_equal(blocks[0], want[:7])
    assert json.loads((_state(out) / "state.json").read_text())["chunks_done"] == 1  # replaced by this request's
    assert not (_state(out) / "chunk_00001.npy").exists()
    blocks, calls, summary = _render(env, out, monkeypatch, seed=2)
    assert calls == 2 and summary["resumed_after_chunk"] == 1 and np.array_equal(np.concatenate(blocks), want)
    assert not _state(out).exists()


def _missing_chunk(state):
    (state / "chunk_00001.npy").unlink()


def _cut_chunk(state):
    p = state / "chunk_00001.npy"
    p.write_bytes(p.read_bytes()[:-100])


def _bad_json(state):
    (state / "state.json").write_text('{"format": "echomimic-v3-chunks-1", "fingerprint": ')


def _too_many(state):
    meta = json.loads((state / "state.json").read_text())
    (state / "state.json").write_text(json.dumps({**meta, "chunks_done": 3}))  # claims a chunk never written


def _no_state_json(state):
    (state / "state.json").unlink()


def _bad_tail(state):
    with np.load(state / "carry_00001.npz") as z:
        carry = dict(z)
    np.savez(state / "carry_00001.npz", **{**carry, "tail": carry["tail"][:1]})


@pytest.mark.parametrize("damage", [_missing_chunk, _cut_chunk, _bad_json, _too_many, _no_state_json, _bad_tail])
def test_a_damaged_state_is_never_trusted(env, tmp_path, monkeypatch, small_chunks, caplog, damage):
    out = _stopped_state(env, tmp_path, monkeypatch)
    damage(_state(out))
    with caplog.at_level(logging.WARNING):
        blocks, calls, summary = _render(env, out, monkeypatch)
    assert "starting from the first chunk" in caplog.text
    assert calls == 3 and "resumed_after_chunk" not in summary
    assert np.array_equal(np.concatenate(blocks), _uninterrupted(env, monkeypatch))
    assert not _state(out).exists()


def test_a_state_folder_keeps_files_that_are_not_its_own(env, tmp_path, monkeypatch, small_chunks):
    out = tmp_path / "mine.mp4"
    _state(out).mkdir()
    (_state(out) / "notes.txt").write_text("mine")
    _render(env, out, monkeypatch)
    assert out.is_file() and [p.name for p in _state(out).iterdir()] == ["notes.txt"]


def test_something_else_at_the_state_folders_name_is_refused_before_any_work(env, tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    out = tmp_path / "x.mp4"
    _state(out).write_text("a file")
    req = V3Request(reference=str(env["ref"]), audio=str(env["dir"] / "speech.wav"), output=str(out),
                    models=str(env["folder"]), size=(32, 32), length=TOTAL, resumable=True)
    with pytest.raises(EchoMimicError, match="resume-v3 exists and is not a folder"):
        plan_v3(req)
    plan_v3(V3Request(**{**req.__dict__, "resumable": False}))  # only a resumable render needs the name


def test_a_one_shot_clip_has_nothing_to_keep(env, tmp_path, monkeypatch, caplog):
    """At most one chunk (81 frames; here 21 with the real chunk size): rendered as before, nothing kept, one log line."""
    out = tmp_path / "short.mp4"
    with caplog.at_level(logging.INFO):
        blocks, calls, summary = _render(env, out, monkeypatch)
    assert calls == 1 and summary["frames"] == TOTAL and out.is_file() and not _state(out).exists()
    assert "nothing to keep between chunks" in caplog.text


def test_the_command_line_takes_resumable_for_v3(env, tmp_path, monkeypatch, small_chunks, capsys):
    """--resumable is no V1/V2-only option any more: it reaches the V3 request (a stopped state is gone on from)."""
    from echomimic_lib.cli import main

    out = _stopped_state(env, tmp_path, monkeypatch)
    models = tmp_path / "models"
    models.mkdir()
    (models / "v3-flash").symlink_to(env["folder"])
    rc = main(["animate", "--version", "v3-flash", "--reference", str(env["ref"]), "--audio", str(env["dir"] / "speech.wav"),
               "-o", str(out), "--models", str(models), "--offline", "--device", "cpu", "--dtype", "fp32", "--steps", "2",
               "--width", "32", "--height", "32", "--length", str(TOTAL), "--seed", "1", "--resumable"])
    said = capsys.readouterr()
    assert rc == 0, said.err
    assert "chunks 1..2 from the kept state" in said.out
    assert out.is_file() and not _state(out).exists()


def test_a_batch_row_takes_a_resumable_column_never_hashed(tmp_path):
    """``resumable`` reaches the row's request; rows recorded before the column existed keep their fingerprint."""
    import dataclasses
    from types import SimpleNamespace

    from echomimic_lib.jobs.batch.manifest_row import _convert
    from echomimic_lib.jobs.batch.results import fingerprint
    from echomimic_lib.jobs.batch.v3 import V3Row, build_v3_kwargs

    ref, audio = tmp_path / "a.png", tmp_path / "a.wav"
    ref.write_bytes(b"png")
    audio.write_bytes(b"wav")
    kw = build_v3_kwargs({"reference": str(ref), "audio": str(audio), "resumable": "true"}, tmp_path, _convert)
    assert V3Row(output=str(tmp_path / "a.mp4"), **kw).request("cpu", torch.float32).resumable is True
    OldRow = dataclasses.make_dataclass("V3Row", [(f.name, f.type, f) for f in dataclasses.fields(V3Row) if f.name != "resumable"])
    base = dict(reference=str(ref), audio=str(audio), output=str(tmp_path / "a.mp4"))

    def job(request):
        return SimpleNamespace(kind="animate", request=request, weight_key=("v3-flash", "m", "auto"))

    old = fingerprint(job(OldRow(**base)))
    assert fingerprint(job(V3Row(**base))) == old == fingerprint(job(V3Row(**base, resumable=True)))


def test_the_state_is_written_whole_or_not_claimed(env, tmp_path, monkeypatch, small_chunks):
    """A write that fails in the middle of chunk 2 (its frames on disk, its count not), then the render is stopped: the
    state claims chunk 1 only, and a rerun goes on from chunk 2."""
    from echomimic_lib.pipeline.wan import chunk_state

    out = tmp_path / "cut.mp4"
    real = chunk_state.write_text_atomic
    seen = []

    def failing(path, text):
        seen.append(text)
        if len(seen) == 2:
            raise OSError("disk full")
        return real(path, text)

    monkeypatch.setattr(chunk_state, "write_text_atomic", failing)
    _, _, summary = _render(env, out, monkeypatch, stop_after=14)  # the failed write does not stop it; a stop does
    assert summary is None
    monkeypatch.setattr(chunk_state, "write_text_atomic", real)
    assert json.loads((_state(out) / "state.json").read_text())["chunks_done"] == 1
    assert not list(_state(out).glob(".*partial"))
    blocks, calls, summary = _render(env, out, monkeypatch)
    assert calls == 2 and summary["resumed_after_chunk"] == 1
    assert np.array_equal(np.concatenate(blocks), _uninterrupted(env, monkeypatch))
