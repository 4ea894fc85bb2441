"""``echomimic batch`` with EchoMimicV3 flash-pro rows (``version`` = ``v3-flash``) on a tiny V3 set: ok and error rows,
one load per worker, a rerun skips finished rows and reruns a changed one, a V1-only column refused up front."""
import json
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.io.audio_file import read_audio
from tests._media import write_wav


@pytest.fixture(scope="module")
def v3media(tmp_path_factory, shared_data):
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    d = tmp_path_factory.mktemp("batch_v3")
    write_tiny_v3(d / "models" / "v3-flash")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(d / "speech.wav", wav[0, : int(0.5 * sr)], sr)
    write_wav(d / "other.wav", wav[0, sr: int(1.5 * sr)], sr)
    (d / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)  # not decodable
    (d / "portrait_a.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    return d


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _batch(media, manifest, out) -> int:
    return cli(["batch", str(manifest), "-o", str(out), "--models", str(media / "models"), "--offline", "-q",
                "--no-scores", "--threads", "1", "--set", "width=64", "--set", "height=64", "--set", "steps=2",
                "--set", "length=5"])


def _results(out: Path) -> dict:
    return {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_v3_rows_share_one_load_skip_when_done_and_rerun_when_changed(v3media, tmp_path):
    rows = [{"name": "a", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": 1,
             "prompt": "a man is speaking ."},
            {"name": "bad", "version": "v3-flash", "reference": "portrait_a.png", "audio": "broken.wav"},
            {"name": "b", "version": "v3-flash", "reference": "portrait_a.png", "audio": "other.wav", "seed": 2,
             "audio-cfg": 1.0, "teacache": "off", "no-color-transfer": True}]
    out = tmp_path / "out"
    assert _batch(v3media, _jsonl(v3media / "v3.jsonl", rows), out) == 1  # one row failed
    res = _results(out)
    assert list(res) == ["a", "bad", "b"]  # manifest order
    assert res["bad"]["status"] == "error" and "cannot be opened as a media file" in res["bad"]["error"]
    assert not (out / "bad.mp4").exists()
    for name in ("a", "b"):
        assert res[name]["status"] == "ok" and res[name]["frames"] == 5 and (out / f"{name}.mp4").is_file()
    assert [res[n]["loaded_models"] for n in ("a", "b")] == [True, False]  # one V3 load for the worker's two rows
    assert res["a"]["fingerprint"] != res["b"]["fingerprint"]
    assert not list(out.glob("*partial*"))

    mtimes = {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in ("a", "b")}
    assert _batch(v3media, v3media / "v3.jsonl", out) == 1  # the bad row fails again; the two done rows are skipped
    again = _results(out)
    assert again["a"] == res["a"] and again["b"] == res["b"]
    assert {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in ("a", "b")} == mtimes

    rows[2]["prompt"] = "a woman is speaking ."  # a changed prompt: only that row renders again
    del rows[1]
    assert _batch(v3media, _jsonl(v3media / "v3b.jsonl", rows), out) == 0
    third = _results(out)
    assert third["a"] == res["a"] and (out / "a.mp4").stat().st_mtime_ns == mtimes["a"]
    assert third["b"]["status"] == "ok" and third["b"]["fingerprint"] != res["b"]["fingerprint"]
    assert third["b"]["loaded_models"] is True


def test_v3_row_with_a_v1_column_is_refused_before_anything_runs(v3media, tmp_path, capsys):
    rows = [{"name": "ok", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav"},
            {"name": "posed", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "pose": "poses"},
            {"name": "moded", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "mode": "audio"}]
    out = tmp_path / "out"
    assert _batch(v3media, _jsonl(v3media / "refused.jsonl", rows), out) == 2
    err = capsys.readouterr().err
    assert "line 2: column 'pose' is not an EchoMimicV3 flash-pro option" in err
    assert "line 3: column 'mode'" in err and "nothing was started" in err
    assert not out.exists()


def test_v3_fingerprint_of_a_row_without_lora_is_the_one_recorded_before_the_lora_columns(tmp_path):
    """Rows recorded by the release without ``lora`` / ``lora-strength`` stay done: their fingerprint is unchanged."""
    import dataclasses
    from types import SimpleNamespace

    from echomimic_lib.jobs.batch.results import fingerprint
    from echomimic_lib.jobs.batch.v3 import V3Row

    later = {"lora", "lora_strength"}
    old_fields = [(f.name, f.type, f) for f in dataclasses.fields(V3Row) if f.name not in later]
    OldRow = dataclasses.make_dataclass("V3Row", old_fields)  # the row as it was before the LoRA columns
    ref, audio = tmp_path / "a.png", tmp_path / "a.wav"
    ref.write_bytes(b"png")
    audio.write_bytes(b"wav")
    kw = dict(reference=str(ref), audio=str(audio), output=str(tmp_path / "a.mp4"), prompt="hi", seed=7)

    def job(request):
        return SimpleNamespace(kind="animate", request=request, weight_key=("v3-flash", "m", "auto"))

    old = fingerprint(job(OldRow(**kw)))
    assert fingerprint(job(V3Row(**kw))) == old
    assert fingerprint(job(V3Row(**kw, lora_strength=0.5))) != old  # a strength set is hashed (it changes the result)


def _frames_digest(monkeypatch):
    """SHA-256 of every frame block the in-process mp4 writer encodes (the single command's frames)."""
    import hashlib

    from echomimic_lib.io import video_writer

    digest, real = hashlib.sha256(), video_writer.Mp4Writer.write

    def spy(self, frames):
        digest.update(video_writer._as_uint8(frames).tobytes())
        return real(self, frames)

    monkeypatch.setattr(video_writer.Mp4Writer, "write", spy)
    return digest


def test_v3_records_carry_frames_sha256_and_encode_each_prompt_once(v3media, tmp_path, monkeypatch):
    """frames_sha256: same seed, same digest; another seed, another; and it is the digest of the frames the single
    command writes for the same settings. The two prompts of four rows are encoded by the first row the worker renders
    (one umT5 load), into the prompt cache."""
    p1, p2 = "sha test one .", "sha test two ."  # prompts no other test caches
    rows = [{"name": "s1", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": 5, "prompt": p1},
            {"name": "s1again", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": 5, "prompt": p1},
            {"name": "s2", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": 6, "prompt": p1},
            {"name": "q", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": 5, "prompt": p2}]
    manifest = _jsonl(v3media / "sha.jsonl", rows)
    cache_dir = v3media / "models" / "v3-flash" / "prompt_cache"
    before = set(cache_dir.glob("*.safetensors"))
    assert _batch(v3media, manifest, tmp_path / "out") == 0
    res = _results(tmp_path / "out")
    digests = {n: r["frames_sha256"] for n, r in res.items()}
    assert all(len(d) == 64 for d in digests.values())
    assert digests["s1"] == digests["s1again"] != digests["s2"]
    assert [res[n]["prompts_encoded"] for n in ("s1", "s1again", "s2", "q")] == [2, 0, 0, 0]  # both by the first row
    assert len(set(cache_dir.glob("*.safetensors")) - before) == 2
    assert not list(cache_dir.glob("*.partial"))

    import torch

    digest = _frames_digest(monkeypatch)  # the single command, same settings as row s1 (and threads: CPU float
    out = tmp_path / "single.mp4"         # sums depend on their count, and the tiny set's frames with them)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = cli(["animate", "--version", "v3-flash", "--reference", str(v3media / "portrait_a.png"), "--audio",
                    str(v3media / "speech.wav"), "-o", str(out), "--models", str(v3media / "models"), "--offline",
                    "--width", "64", "--height", "64", "--steps", "2", "--length", "5", "--seed", "5", "--prompt", p1,
                   "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and out.is_file() and digest.hexdigest() == digests["s1"]


def test_a_v3_worker_loads_umt5_once_for_every_prompt_and_frees_it(v3media, tmp_path, monkeypatch):
    """In one worker (its ModelCache and render loop, in process): the first row encodes the batch's two prompts with one
    umT5 load and frees it before rendering (nothing holds the encoder); the other rows and a rerun load it zero times."""
    import gc
    import weakref

    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest
    from echomimic_lib.jobs.batch.render import ModelCache
    from echomimic_lib.jobs.batch.runner import _prepare_weights
    from echomimic_lib.jobs.batch.workers import render_payload
    from echomimic_lib.pipeline.wan import encoders

    loaded, real = [], encoders.load_umt5

    def counting(*a, **kw):
        tok, model = real(*a, **kw)
        loaded.append(weakref.ref(model))
        return tok, model

    monkeypatch.setattr(encoders, "load_umt5", counting)
    prompts = ["count test one .", "count test two ."]
    rows = [{"name": f"r{i}", "version": "v3-flash", "reference": "portrait_a.png", "audio": "speech.wav", "seed": i,
             "prompt": prompts[i % 2]} for i in range(3)]
    manifest = _jsonl(v3media / "count.jsonl", rows)
    defaults = {"models": str(v3media / "models"), "offline": True, "width": 64, "height": 64, "steps": 2, "length": 5}

    def worker(outdir):
        jobs = check_jobs(read_manifest(manifest, outdir, defaults))
        _prepare_weights(jobs)  # as the runner does before handing the jobs out
        assert all(j.prompts == tuple(prompts) for j in jobs)
        cache, out = ModelCache(), []
        for job in jobs:
            out.append(render_payload(job, "cpu", cache, None))
            gc.collect()
            assert all(ref() is None for ref in loaded)  # released right after encoding
            assert not any(v is not None and any(v is ref() for ref in loaded) for v in vars(cache.value).values())
        return out

    first = worker(tmp_path / "a")
    assert [r["status"] for r in first] == ["ok"] * 3, first
    assert len(loaded) == 1 and [r["prompts_encoded"] for r in first] == [2, 0, 0]
    second = worker(tmp_path / "b")  # a rerun with the cache warm
    assert len(loaded) == 1 and [r["prompts_encoded"] for r in second] == [0, 0, 0]
    assert [r["frames_sha256"] for r in second] == [r["frames_sha256"] for r in first]


def test_render_v3_hands_each_streamed_chunk_to_on_frames(v3media, shared_data, tmp_path, monkeypatch):
    """A long clip (chunks from iter_long, stubbed here) reaches ``on_frames`` block by block, in order, as the writer
    gets it: the batch's digest of the blocks is that of the whole video's frames, with no copy of them kept."""
    import hashlib

    import numpy as np
    import torch

    from echomimic_lib.jobs.animate_v3 import load_v3, model_files, render_v3
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3
    from echomimic_lib.pipeline.wan import long

    folder = v3media / "models" / "v3-flash"
    plan = plan_v3(V3Request(reference=str(v3media / "portrait_a.png"), audio=str(shared_data / "audio" / "echomimic_en.wav"),
                             output=str(tmp_path / "long.mp4"), models=str(folder), steps=2, size=(64, 64), length=89))
    assert plan.frames > 81
    rng = np.random.default_rng(0)
    w, h = plan.size
    blocks = [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for n in (73, 8, plan.frames - 81)]
    monkeypatch.setattr(long, "iter_long", lambda *a, **kw: iter(blocks))
    seen, digest = [], hashlib.sha256()

    def on_frames(block):
        seen.append(block)
        digest.update(block.tobytes())

    out = render_v3(plan, load_v3(model_files(folder), torch.device("cpu"), torch.float32), on_frames=on_frames)
    assert out["frames"] == plan.frames and (tmp_path / "long.mp4").is_file()
    assert len(seen) == 3 and all(a is b for a, b in zip(seen, blocks))
    assert digest.hexdigest() == hashlib.sha256(np.concatenate(blocks).tobytes()).hexdigest()


def test_v3_long_mode_column_reaches_the_request_and_only_a_set_value_is_hashed(tmp_path):
    """``long-mode`` (as ``--long-mode``): a row without it keeps the fingerprint it had before the column existed; a
    row with ``continue`` is another result; an unknown value is a manifest error naming the column."""
    import dataclasses
    from types import SimpleNamespace

    import pytest
    import torch

    from echomimic_lib.jobs.batch.manifest_row import _convert
    from echomimic_lib.jobs.batch.results import fingerprint
    from echomimic_lib.jobs.batch.v3 import V3Row, build_v3_kwargs

    ref, audio = tmp_path / "a.png", tmp_path / "a.wav"
    ref.write_bytes(b"png")
    audio.write_bytes(b"wav")
    kw = build_v3_kwargs({"reference": str(ref), "audio": str(audio), "long_mode": "continue"}, tmp_path, _convert)
    row = V3Row(output=str(tmp_path / "a.mp4"), **kw)
    assert row.request("cpu", torch.float32).long_mode == "continue"
    with pytest.raises(ValueError, match="long-mode: 'loop'; use reanchor or continue"):
        build_v3_kwargs({"reference": str(ref), "audio": str(audio), "long_mode": "loop"}, tmp_path, _convert)

    OldRow = dataclasses.make_dataclass("V3Row", [(f.name, f.type, f) for f in dataclasses.fields(V3Row) if f.name != "long_mode"])
    base = dict(reference=str(ref), audio=str(audio), output=str(tmp_path / "a.mp4"))

    def job(request):
        return SimpleNamespace(kind="animate", request=request, weight_key=("v3-flash", "m", "auto"))

    old = fingerprint(job(OldRow(**base)))
    assert fingerprint(job(V3Row(**base))) == old
    assert fingerprint(job(V3Row(**base, long_mode="continue"))) != old
