"""ComfyUI's dub keeps the source video's colour description, as ``echomimic dub`` does: EchoMimic Save Dub writes
Paste Back's frames with the source's matrix, primaries, transfer and range (read from Load Video's VIDEO: a path or
an in-memory file), converted with that matrix and range; an untagged source gives an untagged output; a VIDEO with
no file is refused with the fix. The whole dubbing workflow (tiny weights, the core nodes as stand-ins) with Save Dub
in place of Create Video + Save Video writes a file tagged as its (non-default) source."""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub
from tests.test_workflows_run import FAST, Core, comfy, run_prompt  # noqa: F401  (comfy: the fixture)

ROOT = Path(__file__).resolve().parents[1]
N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
VC = sub("echomimic_lib.io.video_color")
W = sub("echomimic_lib.io.video_writer")
IO = sub("echomimic_lib.io.video_io")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError

BT709 = VC.ColorDescription(1, 1, 1, VC.RANGE_LIMITED)
BT601_FULL = VC.ColorDescription(5, 5, 6, VC.RANGE_FULL)  # bt470bg matrix / primaries, smpte170m transfer, "pc" range


def _gradient(n=6, h=48, w=64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([(x * 4 + 8 * i) % 256, (y * 5) % 256, np.full_like(x, 40 + 30 * i)], -1) for i in range(n)]
    return np.stack(frames).astype(np.uint8)


def _source(path: Path, color, frames=None) -> Path:
    with W.Mp4Writer(path, 24.0, color=color) as writer:
        writer.write(_gradient() if frames is None else frames)
        return writer.commit()


def _decoded(path: Path) -> np.ndarray:
    return IO.read_video(path, with_audio=False).frames


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "output")
    return tmp_path / "output"


def _save(images, source_video, prefix="echomimic/dub", audio=None):
    return N["EchoMimicSaveDub"]().execute(images, 24.0, source_video, prefix, audio)


@pytest.mark.parametrize("color", [BT709, BT601_FULL], ids=["bt709", "bt601-full"])
@pytest.mark.parametrize("kind", ["path", "VideoFromFile(path)", "VideoFromFile(BytesIO)"])
def test_save_dub_writes_the_source_colour_tags(tmp_path, out_dir, color, kind):
    src = _source(tmp_path / "src.mp4", color)
    assert VC.read_color(src) == color  # the source is tagged as asked
    video = {"path": src, "VideoFromFile(path)": SimpleNamespace(get_stream_source=lambda: str(src)),
             "VideoFromFile(BytesIO)": SimpleNamespace(get_stream_source=lambda: io.BytesIO(src.read_bytes()))}[kind]
    images = torch.from_numpy(_gradient()).float() / 255
    out = _save(images, video)
    path = Path(out["result"][0])
    assert path.parent == out_dir / "echomimic" and out["result"][1] == 24.0
    assert VC.read_color(path) == color
    decoded = _decoded(path)  # decoded with its own tags: the frames come back (H.264 rounding only)
    assert decoded.shape == (6, 48, 64, 3)
    assert np.abs(decoded.astype(np.float32) - _gradient()).mean() < 4.0


def test_an_untagged_source_gives_an_untagged_output(tmp_path, out_dir):
    src = _source(tmp_path / "plain.mp4", VC.UNTAGGED)
    assert not VC.read_color(src).tagged
    out = _save(torch.from_numpy(_gradient()).float() / 255, src)
    assert not VC.read_color(Path(out["result"][0])).tagged


def test_a_video_without_a_file_is_refused_before_anything_is_written(out_dir):
    images = torch.from_numpy(_gradient()).float() / 255
    with pytest.raises(EchoMimicError, match="Load Video"):
        _save(images, {"images": images, "fps": 24.0})  # a VIDEO made in the workflow (Create Video)
    with pytest.raises(EchoMimicError, match="IMAGE"):
        _save(torch.zeros(0, 8, 8, 3), Path("x.mp4"))
    assert not out_dir.exists() or not any(out_dir.rglob("*.mp4"))


def test_the_bytesio_source_is_put_back_at_its_start(tmp_path):
    src = io.BytesIO(_source(tmp_path / "src.mp4", BT709).read_bytes())
    src.seek(100)
    assert VC.read_color(src) == BT709 and src.tell() == 0


@pytest.mark.slow
def test_the_dub_workflow_with_save_dub_keeps_the_source_colours(comfy):  # noqa: F811
    person = comfy / "input" / "echomimic_person.mp4"
    tagged = comfy / "input" / "tagged_person.mp4"
    _source(tagged, BT601_FULL, frames=_decoded(person))
    prompt = json.loads((ROOT / "workflows" / "api" / "v1_dub_video.json").read_text())
    prompt["7"]["inputs"]["file"] = "tagged_person.mp4"
    assert prompt["20"] == {"class_type": "EchoMimicSaveDub", "_meta": prompt["20"]["_meta"], "inputs": {
        "images": ["11", 0], "fps": ["11", 1], "source_video": ["7", 0], "filename_prefix": "echomimic/v1_dub_video",
        "audio": ["6", 2]}}  # the shipped workflow saves with Save Dub
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "OUTPUT_DIR", comfy / "output")
        out = run_prompt(prompt, Core(comfy), FAST)
    path = Path(out["20"][0])
    assert path.is_file() and VC.read_color(path) == BT601_FULL
    frames = out["11"][0]
    info = IO.probe(path)
    assert info["frames"] == frames.shape[0] == 12 and (info["height"], info["width"]) == (256, 256)
    assert info["audio_seconds"] and abs(info["audio_seconds"] - 0.5) < 0.05
    decoded = _decoded(path).astype(np.float32)
    assert np.abs(decoded - frames.numpy() * 255).mean() < 6.0  # the composite, as the source's conversion gives it back


def test_echomimic_queue_gives_save_dub_the_jobs_prefix():
    build_prompt = sub("echomimic_lib.jobs.queue_client").build_prompt
    prompt = json.loads((ROOT / "workflows" / "api" / "v1_dub_video.json").read_text())
    out = build_prompt(prompt, None, "speech.wav", "batch/person__speech", driving="person.mp4", video_required=True)
    assert out["20"]["class_type"] == "EchoMimicSaveDub" and out["20"]["inputs"]["filename_prefix"] == "batch/person__speech"
    assert out["7"]["inputs"]["file"] == "person.mp4"
