"""``echomimic batch`` with EchoMimicV3 flash-pro rows (``version`` = ``v3-flash``) on a tiny V3 set: ok and error rows,
one load per worker, a rerun skips finished rows and reruns a changed one, a V1-only column refused up front."""
import json
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.io.video_io import read_audio
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
