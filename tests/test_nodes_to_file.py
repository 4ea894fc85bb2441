"""EchoMimic Sampler (to file) and EchoMimic V3 Sampler (to file) through the bridge's stand-ins on tiny weights: the
mp4 holds the in-memory sampler's frames for the same seed (exactly what the encoder gets; within H.264's rounding
after decoding) and the audio, the UI result names it, the frames reach the writer window by window and the whole
clip is never built, a prefix outside the output folder is refused before any sampling (the stand-in numbers and
refuses as ComfyUI's ``get_save_image_path``), and Cancel, while sampling or while writing, leaves no file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub
from tests.test_workflows_run import comfy  # noqa: F401  (the fixture: input/ with the workflows' files)

ROOT = Path(__file__).resolve().parents[1]
N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
T = sub("nodes.to_file")
W = sub("echomimic_lib.io.video_writer")
IO = sub("echomimic_lib.io.video_io")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
FPS, SIZE = 24.0, 64
H264_TOL = 25.0  # mean |decoded - frame| per frame, of 255: H.264 (crf 18, 4:2:0) on the tiny model's noise-like frames gives about 17


def u8(frames) -> np.ndarray:
    return (np.clip(np.asarray(frames, dtype=np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def v1(tiny_comfy_models):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "MODELS_DIR", tiny_comfy_models)
        mp.setattr(C, "INPUT_DIR", tiny_comfy_models.parent / "input")
        yield N["EchoMimicModelLoader"]().execute("V1 audio", "normal", dtype="auto", attention="sdpa", keep_loaded=False,
                                                  weights_folder="auto", vae="auto", auto_download=False)[0]


@pytest.fixture(scope="module")
def speech(shared_data):
    wav, sr = sub("echomimic_lib.io.audio_file").read_audio(shared_data / "audio" / "echomimic_en.wav")
    return {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, :sr])).unsqueeze(0), "sample_rate": sr}  # 1 s


@pytest.fixture(scope="module")
def feats(v1, speech):
    return N["EchoMimicAudioEncoder"]().execute(v1, speech, FPS)[0]  # 24 frames


@pytest.fixture(scope="module")
def reference(shared_data):
    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA)).float().div(255).unsqueeze(0)


@pytest.fixture
def output(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "output")
    return tmp_path / "output"


@pytest.fixture
def spies(monkeypatch):
    """Each block the writer encodes (as uint8), and what the pipeline's Sampler was given (frame_sink) and returned."""
    rec = SimpleNamespace(blocks=[], sinks=[], frames=[])
    write = W.Mp4Writer.write

    def spy_write(self, frames):
        rec.blocks.append(u8(frames) if np.asarray(frames).dtype != np.uint8 else np.array(frames))
        return write(self, frames)

    monkeypatch.setattr(W.Mp4Writer, "write", spy_write)
    sampler_module = sub("nodes.sampler")

    class SpySampler(sampler_module.Sampler):
        def __call__(self, *args, frame_sink=None, **kwargs):
            rec.sinks.append(frame_sink)
            result = super().__call__(*args, frame_sink=frame_sink, **kwargs)
            rec.frames.append(result.frames)
            return result

    monkeypatch.setattr(sampler_module, "Sampler", SpySampler)
    return rec


def to_file(handle, reference, feats, prefix="echomimic/test", **kw):
    return N["EchoMimicSamplerToFile"]().execute(handle, reference, feats, 7, 1, 0.0, 0, 0, 0, 12, 3, prefix, **kw)


def check_decoded(path, expected: np.ndarray, fps: float):
    """The mp4 decodes to ``expected`` (uint8) within H.264's rounding, each frame in its place, with the audio."""
    clip = IO.read_video(path)
    assert clip.frames.shape == expected.shape and clip.fps == fps
    decoded = clip.frames.astype(np.float32)
    own = np.abs(decoded - expected).mean(axis=(1, 2, 3))
    assert own.max() < H264_TOL
    if len(expected) > 1:
        assert (own[1:] < np.abs(decoded[1:] - expected[:-1]).mean(axis=(1, 2, 3))).all()  # in order
    assert clip.audio is not None and abs(clip.audio.shape[-1] / clip.sample_rate - len(expected) / fps) < 0.1  # (AAC padding)
    return clip


# ------------------------------------------------------------------------------------------ V1 / V2
def test_the_file_holds_the_samplers_frames_and_audio_streamed_window_by_window(v1, reference, feats, speech, output, spies):
    out = to_file(v1, reference, feats)
    path, fps, preview = out["result"]
    assert Path(path) == output / "echomimic" / "test_00001_.mp4" and fps == FPS
    assert out["ui"] == {"images": [{"filename": "test_00001_.mp4", "subfolder": "echomimic", "type": "output"}],
                         "animated": (True,)}  # as core's Save Video reports its file: the frontend shows it
    assert files(output) == ["echomimic/test_00001_.mp4"]  # published, no temporary file left
    # memory: the pipeline decoded into the node's sink and collected nothing; the writer got small blocks
    n = feats.frame_count
    assert len(spies.sinks) == 1 and spies.sinks[0] is not None and spies.frames == [None]
    sizes = [b.shape[0] for b in spies.blocks]
    assert sum(sizes) == n == 24 and max(sizes) <= 8  # at most one decode batch at a time, never the clip
    streamed = np.concatenate(spies.blocks)

    frames, fps_mem, cut = N["EchoMimicSampler"]().execute(v1, reference, feats, 7, 1, 0.0, 0, 0, 0, 12, 3)
    expected = u8(frames)
    assert fps_mem == fps and np.array_equal(streamed, expected)  # the encoder got exactly the sampler's frames
    clip = check_decoded(path, expected, FPS)
    sound = cut["waveform"][0].mean(0).numpy()
    got = clip.audio.mean(0)[: sound.shape[0]]
    assert np.corrcoef(got, sound[: got.shape[0]])[0, 1] > 0.9  # the speech, cut to the video (AAC)
    assert preview.shape == (8, SIZE, SIZE, 3) and torch.equal(preview[0], torch.from_numpy(expected[0]).float() / 255)
    assert all(any(torch.equal(p, torch.from_numpy(e).float() / 255) for e in expected) for p in preview)


@pytest.mark.parametrize("prefix", ["../escape/video", "echomimic/../../video", "ABSOLUTE", ""])
def test_a_prefix_outside_the_output_folder_is_refused_before_any_sampling(v1, reference, feats, output, spies, tmp_path,
                                                                         prefix):
    prefix = str(tmp_path / "elsewhere" / "video") if prefix == "ABSOLUTE" else prefix
    with pytest.raises(EchoMimicError) as err:
        to_file(v1, reference, feats, prefix)
    assert ("empty" if not prefix else "outside ComfyUI's output folder") in str(err.value)
    assert "echomimic/video" in str(err.value)  # the fix
    assert spies.sinks == [] and spies.blocks == []  # nothing sampled
    assert files(tmp_path) == []  # nothing written anywhere
    for node in ("EchoMimicSamplerToFile", "EchoMimicV3SamplerToFile"):  # and refused when the prompt is queued
        assert str(err.value) == N[node].VALIDATE_INPUTS(filename_prefix=prefix)
        assert N[node].VALIDATE_INPUTS(filename_prefix="echomimic/video") is True


def test_the_queue_time_check_keeps_the_samplers_own_checks():
    node = N["EchoMimicSamplerToFile"]
    assert node.VALIDATE_INPUTS(width=0, height=0, context_frames=12, context_overlap=3, filename_prefix="a/b") is True
    assert "context_overlap" in node.VALIDATE_INPUTS(context_frames=12, context_overlap=12, filename_prefix="a/b")


def test_cancel_while_sampling_leaves_no_file_and_the_next_run_works(v1, reference, feats, output, monkeypatch):
    seen = []

    def hook(value, total, preview):
        seen.append(value)
        raise C.InterruptProcessingException()

    monkeypatch.setattr(C, "PROGRESS_HOOK", hook)
    with pytest.raises(C.InterruptProcessingException):
        to_file(v1, reference, feats)
    assert seen == [1] and files(output) == []


def test_cancel_while_writing_removes_the_partial_file(v1, reference, feats, output, spies, monkeypatch):
    """In ComfyUI ``check_interrupt`` raises after Cancel; the node checks it before each block it writes."""
    partial = []

    def interrupt():
        found = [p.name for p in output.rglob("*.partial.mp4")]
        if found:  # one block is in the file already
            partial.extend(found)
            raise C.InterruptProcessingException()

    monkeypatch.setattr(C, "check_interrupt", interrupt)
    with pytest.raises(C.InterruptProcessingException):
        to_file(v1, reference, feats)
    assert len(spies.blocks) == 1 and partial and partial[0].startswith(".test_00001_.")
    assert files(output) == []


def test_the_preview_keeps_a_few_evenly_spaced_frames_of_a_stream_of_any_length():
    for total in (1, 5, 8, 24, 1000):
        preview, held = T.FramePreview(8), 0
        for start in range(0, total, 7):
            index = np.arange(start, min(start + 7, total))
            preview.take(start, np.stack([np.full((2, 2, 3), i % 256, np.uint8) for i in index]))
            held = max(held, len(preview.kept))
        picks = (preview.image()[:, 0, 0, 0] * 255).round().long().tolist()
        assert held <= 15 and len(picks) == min(8, total) and picks[0] == 0
        if total == 1000:  # 0, 128, 256 ... spread over the clip (frame values wrap at 256)
            assert picks == [i % 256 for i in range(0, 1000, 128)]


def test_the_stand_in_numbers_files_like_comfyui_and_keeps_subfolders_relative(output):
    (output / "echomimic").mkdir(parents=True)
    for name in ("clip_00003_.mp4", "clip_00001_.png", "clip_x.mp4", "other_00009_.mp4"):
        (output / "echomimic" / name).write_bytes(b"")
    path, entry = C.save_path("echomimic/clip", "mp4")
    assert path == output / "echomimic" / "clip_00004_.mp4" and entry["subfolder"] == "echomimic"
    path, entry = C.save_path(str(output / "deep" / "v"), "mp4")  # an absolute prefix inside the folder is fine
    assert path == output / "deep" / "v_00001_.mp4" and entry == {"filename": "v_00001_.mp4", "subfolder": "deep", "type": "output"}
    path, _ = C.save_path("%width%x%height%/v", "mp4", 64, 48)
    assert path == output / "64x48" / "v_00001_.mp4"


COMPARE = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
import folder_paths
out = {}
for prefix in json.loads(sys.argv[3]):
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, sys.argv[2], 64, 48)
        out[prefix] = [folder.rstrip("/"), name, counter]
    except Exception:
        out[prefix] = "refused"
print(json.dumps(out))
'''


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="set COMFYUI_PATH to a ComfyUI checkout")
def test_the_stand_in_agrees_with_comfyuis_get_save_image_path(output):
    (output / "echomimic").mkdir(parents=True)
    for name in ("clip_00003_.mp4", "clip_00001_.png", "clip_x.mp4"):
        (output / "echomimic" / name).write_bytes(b"")
    prefixes = ["echomimic/clip", "new/clip", "a/./b/", "%width%/v", "../x", "/etc/x", "a/../../b", str(output / "in" / "v")]
    res = subprocess.run([sys.executable, "-c", COMPARE, os.environ["COMFYUI_PATH"], str(output), json.dumps(prefixes)],
                         capture_output=True, text=True, timeout=120)
    real = json.loads(res.stdout.strip().splitlines()[-1])
    for prefix in prefixes:
        if C.prefix_problem(prefix):
            assert real[prefix] == "refused", prefix
        else:
            folder, name, counter, _ = C._stand_in_save_path(prefix, output, 64, 48)
            assert real[prefix] == [folder.rstrip("/"), name, counter], prefix
    assert real["echomimic/clip"][2] == 4


def test_in_comfyui_the_prefix_is_checked_before_comfyuis_helper_runs(output, monkeypatch):
    calls = []
    fake = SimpleNamespace(get_output_directory=lambda: str(output),
                           get_save_image_path=lambda *a: calls.append(a) or (str(output / "s"), "v", 3, "s", a[0]))
    monkeypatch.setattr(C, "folder_paths", fake)
    with pytest.raises(EchoMimicError, match="outside ComfyUI's output folder"):
        C.save_path("../v", "mp4")
    assert calls == []
    path, entry = C.save_path("s/v", "mp4", 64, 48)
    assert calls == [("s/v", str(output), 64, 48)] and path == output / "s" / "v_00003_.mp4" and entry["subfolder"] == "s"


@pytest.mark.slow
def test_the_to_file_workflow_runs_and_writes_the_video(comfy, monkeypatch):
    """workflows/api/v1_audio_to_file.json executed as ComfyUI's queue does (tests/test_workflows_run.py): no Create /
    Save Video, the sampler's file in output/echomimic/, its path shown by Preview Any, its preview by Preview Image."""
    from tests.test_workflows_run import FAST, Core, run_prompt

    monkeypatch.setattr(C, "OUTPUT_DIR", comfy / "output")
    core = Core(comfy)
    out = run_prompt(json.loads((ROOT / "workflows" / "api" / "v1_audio_to_file.json").read_text()), core, FAST)
    path, fps, preview = out["6"]
    assert Path(path) == comfy / "output" / "echomimic" / "v1_audio_to_file_00001_.mp4" and fps == FPS
    assert core.saved == [] and core.shown == [path] and core.previews == [preview]
    info = IO.probe(path)
    assert (info["width"], info["height"]) == (64, 64) and info["frames"] == out["5"][2] and info["audio_seconds"]


# ------------------------------------------------------------------------------------------ V3
@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    """The tiny V3 set, loaded, with core's CONDITIONING / CLIP_VISION_OUTPUT / VAE as core's nodes give them."""
    from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
    from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae

    root = tmp_path_factory.mktemp("v3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "MODELS_DIR", root / "models")
        folder = write_tiny_v3(root / "models" / "echomimic" / "v3-flash")
        (handle,) = sub("nodes.v3").EchoMimicV3Loader().execute("v3-flash", "fp32")
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(handle=handle, positive=[[torch.randn(1, 512, TEXT_DIM, generator=g), {}]],
                           clip=SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g)),
                           vae=DiffusersPixelVAE(load_wan_vae(folder / "vae")), image=torch.rand(1, 64, 64, 3, generator=g))


def v3_speech(v3, frames: int, seconds: float):
    g = torch.Generator().manual_seed(1)
    audio = {"waveform": torch.randn(1, 1, int(16000 * seconds), generator=g) * 0.1, "sample_rate": 16000}
    return sub("nodes.v3").EchoMimicV3AudioEncoder().execute(v3.handle, audio, frames)[0]


def v3_args(v3, v3_audio):
    return (v3.handle, v3_audio, v3.positive, v3.clip, v3.vae, v3.image, 64, 2, 3.0, 1, "off", True)


def test_v3_file_holds_the_v3_samplers_frames_and_audio(v3, output, spies):
    v3_audio = v3_speech(v3, 9, 1.0)
    out = N["EchoMimicV3SamplerToFile"]().execute(*v3_args(v3, v3_audio), "echomimic/v3")
    path, fps, preview = out["result"]
    assert out["ui"]["images"] == [{"filename": "v3_00001_.mp4", "subfolder": "echomimic", "type": "output"}] and fps == 25.0
    assert files(output) == ["echomimic/v3_00001_.mp4"] and Path(path) == output / "echomimic" / "v3_00001_.mp4"
    assert [b.shape[0] for b in spies.blocks] == [9]  # one shot: one block
    frames, _, cut = N["EchoMimicV3Sampler"]().execute(*v3_args(v3, v3_audio))
    expected = u8(frames)
    assert np.array_equal(spies.blocks[0], expected)
    check_decoded(path, expected, 25.0)
    assert preview.shape == (8, 64, 64, 3) and torch.equal(preview[0], frames[0])


def test_v3_long_speech_streams_chunk_by_chunk_and_cancel_leaves_no_file(v3, output, spies, monkeypatch):
    """Each chunk's block reaches the file before the next chunk is sampled; a Cancel in the second chunk (the progress
    bar raises it there) removes the file that already holds the first."""
    long = sub("echomimic_lib.pipeline.wan.long")
    state = {"cancel": False, "written_before_next": [], "partial": []}

    def fake_iter_long(model, vae, enc, ref_u8, prompt, clip, samples, total, settings, mode="reanchor", **kw):
        for k, n in enumerate((73, total - 73)):
            if k:
                state["written_before_next"].append(sum(b.shape[0] for b in spies.blocks))
                state["partial"] += [p.name for p in output.rglob("*.partial.mp4")]
                if state["cancel"]:
                    raise C.InterruptProcessingException()
            yield np.full((n,) + ref_u8.shape, 40 * (k + 1), np.uint8)

    monkeypatch.setattr(long, "iter_long", fake_iter_long)
    v3_audio = v3_speech(v3, 89, 4.0)
    out = N["EchoMimicV3SamplerToFile"]().execute(*v3_args(v3, v3_audio), "echomimic/long", "continue")
    assert [b.shape[0] for b in spies.blocks] == [73, 16] and state["written_before_next"] == [73]
    info = IO.probe(out["result"][0])
    assert info["frames"] == 89 and abs(info["audio_seconds"] - 89 / 25) < 0.1  # cut to the video (4 s given)
    assert sorted({round(float(v) * 255) for v in out["result"][2][:, 0, 0, 0]}) == [40, 80]  # spread over both chunks

    spies.blocks.clear()
    state.update(cancel=True, written_before_next=[], partial=[])
    with pytest.raises(C.InterruptProcessingException):
        N["EchoMimicV3SamplerToFile"]().execute(*v3_args(v3, v3_audio), "echomimic/cancelled")
    assert state["written_before_next"] == [73] and state["partial"]  # the first chunk was in the file
    assert files(output) == ["echomimic/long_00001_.mp4"]  # and the cancelled one is gone
