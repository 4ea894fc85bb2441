"""The paste-back and dubbing workflows (API format) executed the way ComfyUI's queue executes a prompt: every node
once, inputs before the nodes that use them, outputs by slot. The pack's own node classes run; the core nodes (Load
Image / Audio / Video, Get Video Components, Create Video, Save Video, Preview Image) are small stand-ins. Tiny random
weights (the session's ``tiny_comfy_models``), 64 px crops, 1 step, half a second of speech."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub
from tests._media import write_wav

ROOT = Path(__file__).resolve().parents[1]
FAST = {"EchoMimicSampler": {"width": 64, "height": 64, "steps": 1, "cfg": 1.0, "context_frames": 16, "context_overlap": 0},
        "EchoMimicSamplerToFile": {"width": 64, "height": 64, "steps": 1, "cfg": 1.0, "context_frames": 16, "context_overlap": 0},
        "EchoMimicReferencePrep": {"width": 64, "height": 64}, "EchoMimicFaceTrack": {"width": 64, "height": 64}}


class Core:
    """Stand-ins for ComfyUI's core nodes, reading ``input/`` and writing ``output/`` like ComfyUI does."""

    def __init__(self, folder: Path):
        self.folder, self.previews, self.saved, self.shown = folder, [], [], []

    def LoadImage(self, image):
        rgb = cv2.cvtColor(cv2.imread(str(self.folder / "input" / image)), cv2.COLOR_BGR2RGB)
        return torch.from_numpy(rgb).float().div(255).unsqueeze(0), torch.zeros(1, *rgb.shape[:2])

    def LoadAudio(self, audio):
        wav, sr = sub("echomimic_lib.io.audio_file").read_audio(self.folder / "input" / audio)
        return ({"waveform": torch.from_numpy(wav).unsqueeze(0), "sample_rate": sr},)

    def LoadVideo(self, file):
        return (self.folder / "input" / file,)

    def GetVideoComponents(self, video):
        clip = sub("echomimic_lib.io.video_io").read_video(video, with_audio=False)
        return torch.from_numpy(clip.frames).float().div(255), None, clip.fps

    def CreateVideo(self, images, fps, audio=None):
        return ({"images": images, "fps": fps, "audio": audio},)

    def SaveVideo(self, video, filename_prefix, format, codec):
        audio = video["audio"]
        wav, sr = (audio["waveform"][0].numpy(), audio["sample_rate"]) if audio else (None, None)
        path = self.folder / "output" / f"{filename_prefix}_00001_.mp4"
        sub("echomimic_lib.io.video_io").write_video(path, video["images"].numpy(), video["fps"], wav, sr)
        self.saved.append(path)
        return ()

    def PreviewImage(self, images):
        self.previews.append(images)
        return ()

    def PreviewAny(self, source):
        self.shown.append(source)
        return ()


def run_prompt(prompt: dict, core: Core, overrides: dict) -> dict:
    nodes = load_pack().NODE_CLASS_MAPPINGS
    done: dict = {}

    def value(v):
        return evaluate(v[0])[v[1]] if isinstance(v, list) else v

    def evaluate(nid: str):
        if nid not in done:
            node = prompt[nid]
            t = node["class_type"]
            kwargs = {k: value(v) for k, v in node["inputs"].items()}
            kwargs.update(overrides.get(t, {}))
            if t in nodes:
                cls = nodes[t]
                result = getattr(cls(), cls.FUNCTION)(**kwargs)
                done[nid] = tuple(result["result"] if isinstance(result, dict) else result)  # an output node: {"ui", "result"}
            else:
                done[nid] = getattr(core, t)(**kwargs)
        return done[nid]

    for nid in prompt:
        evaluate(nid)
    return done


def _fake_person(image):
    """A DWPose-like detection: a person centred in the picture (keypoints normalised to it)."""
    body = np.array([[0.5, 0.25], [0.5, 0.4], [0.36, 0.42], [0.3, 0.6], [0.3, 0.75], [0.64, 0.42], [0.7, 0.6], [0.7, 0.75]]
                    + [[-1.0, -1.0]] * 10)
    score = np.array([[0.9] * 8 + [0.0] * 10])
    hands = np.stack([np.column_stack([np.linspace(0.25, 0.35, 21), np.full(21, 0.8)]),
                      np.column_stack([np.linspace(0.65, 0.75, 21), np.full(21, 0.8)])])
    faces = np.column_stack([np.linspace(0.43, 0.57, 68), np.linspace(0.12, 0.3, 68)])[None]
    return {"bodies": {"candidate": body, "subset": np.where(score > 0.3, np.arange(18), -1.0), "score": score},
            "hands": hands, "hands_score": np.full((2, 21), 0.9), "faces": faces, "faces_score": np.full((1, 68), 0.9)}


@pytest.fixture(scope="module")
def comfy(tiny_comfy_models, shared_data, tmp_path_factory):
    """A ComfyUI input/ folder with the files the workflows name, pose folder 01, and the bridge pointed at them."""
    folder = tmp_path_factory.mktemp("comfy_run")
    inp = folder / "input"
    inp.mkdir()
    portrait = cv2.imread(str(shared_data / "images" / "portrait_a.png"))
    cv2.imwrite(str(inp / "echomimic_portrait.png"), cv2.resize(portrait, (360, 480), interpolation=cv2.INTER_AREA))
    half = cv2.imread(str(shared_data / "images" / "halfbody_0035.png"))
    cv2.imwrite(str(inp / "echomimic_halfbody.png"), cv2.resize(half, (400, 440), interpolation=cv2.INTER_AREA))
    io = sub("echomimic_lib.io.video_io")
    wav, sr = sub("echomimic_lib.io.audio_file").read_audio(shared_data / "audio" / "echomimic_en.wav")
    io.write_video(folder / "tmp.mp4", np.zeros((1, 16, 16, 3), np.uint8), 24.0)  # (warm the encoder)
    clip = io.read_video(shared_data / "video" / "driving_a.mp4", max_frames=8, with_audio=False)
    io.write_video(inp / "echomimic_person.mp4", np.stack([cv2.resize(f, (256, 256)) for f in clip.frames]), 24.0)
    write_wav(inp / "echomimic_speech.wav", wav[0, : sr // 2], sr)
    models = folder / "models"  # a copy: the session's tiny models stay as other modules expect them (no pose folder)
    shutil.copytree(tiny_comfy_models, models)
    poses = models / "echomimic" / "poses" / "01"
    poses.mkdir(parents=True)
    for i in range(24):
        shutil.copy(shared_data / "pose" / "01" / f"{i}.npy", poses)
    bridge, detectors = sub("nodes.comfy_bridge"), sub("nodes.detectors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bridge, "MODELS_DIR", models)
        mp.setattr(bridge, "INPUT_DIR", inp)
        mp.setattr(detectors, "dwpose", lambda download=False: _fake_person)
        yield folder


def _prompt(name: str) -> dict:
    return json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name,picture", [("v1_audio_paste_back", (480, 360)), ("v2_paste_back", (440, 400))])
def test_picture_workflows_write_the_full_size_picture_animated(comfy, name, picture):
    core = Core(comfy)
    out = run_prompt(_prompt(name), core, FAST)
    original = out["1"][0]
    frames, fps, preview = out["11"]
    n = out["5"][2]  # the frames the audio encoder said the clip yields
    assert tuple(frames.shape[1:3]) == picture and frames.shape[0] == out["6"][0].shape[0] == n and fps == 24.0
    same = (frames == original).all(dim=-1)
    assert 0.2 < float(same.float().mean()) < 1.0  # the original outside the mask, the generation inside
    shapes = [tuple(p.shape) for p in core.previews]
    assert shapes[-2:] == [(1, 64, 64, 3), (1, *picture, 3)]  # crop, composite
    assert len(shapes) == (3 if name.startswith("v2") else 2)  # V2 also shows the hand poses that drive it
    info = sub("echomimic_lib.io.video_io").probe(core.saved[0])
    assert (info["height"], info["width"]) == picture and info["frames"] == n and info["audio_seconds"]


@pytest.mark.slow
def test_dub_workflow_keeps_the_videos_size_and_rate_and_follows_the_audio(comfy):
    core = Core(comfy)
    with pytest.MonkeyPatch.context() as mp:  # the workflow ends in EchoMimic Save Dub, which writes to output/
        mp.setattr(sub("nodes.comfy_bridge"), "OUTPUT_DIR", comfy / "output")
        out = run_prompt(_prompt("v1_dub_video"), core, FAST)
    src = out["8"][0]
    frames, fps, _ = out["11"]
    assert tuple(frames.shape) == (12, 256, 256, 3) and fps == 24.0  # 0.5 s of speech: 8 source frames ping-ponged to 12
    plan = out["9"][2]
    for j, s in enumerate(plan.schedule.for_generated(out["6"][0].shape[0]).source):
        x0, y0, x1, y1 = plan.geometry.box
        outside = torch.ones(256, 256, dtype=torch.bool)
        outside[y0:y1, x0:x1] = False
        assert torch.equal(frames[j][outside], src[s][outside])  # each frame pasted onto its own source frame
    assert [tuple(p.shape) for p in core.previews] == [(1, 256, 256, 3), (1, 256, 256, 3)]
    assert sub("echomimic_lib.io.video_io").probe(out["20"][0])["frames"] == 12


@pytest.mark.slow
def test_audio_only_workflow_makes_the_hand_poses_from_the_speech(comfy):
    core = Core(comfy)
    out = run_prompt(_prompt("v2_audio_only"), core, FAST)
    frames, fps, _ = out["6"]
    n = out["5"][2]
    poses, preview = out["11"]
    assert frames.shape[0] == n == len(poses.sequence) and fps == 24.0  # one generated pose per video frame
    assert poses.sequence.report.segments and "gestures from the speech" in poses.notes[0]
    assert [tuple(p.shape[1:]) for p in core.previews] == [(256, 256, 3)] and core.previews[0] is preview
    assert sub("echomimic_lib.io.video_io").probe(core.saved[0])["frames"] == n
