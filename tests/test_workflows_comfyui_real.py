"""Every shipped API workflow (workflows/api/*.json) queued on a real ComfyUI server, when a checkout is at hand:
``COMFYUI_PATH=/path/to/ComfyUI pytest tests/test_workflows_comfyui_real.py`` (skipped without it; ComfyUI is not on
PyPI. The stand-in runs in test_workflows_run.py / test_v3_workflow.py run everywhere).

In a temporary base folder (``--base-directory``) with the pack linked into custom_nodes, ``main.py --cpu`` is started
with the interpreter running the tests (its log is kept and shown on failure; the server is always stopped). The
models are tiny and random, where the loaders look: ``make_tiny(layout="comfyui")`` (V1 / V2), the shared MediaPipe
face model, the first 24 frames of pose folder 01, two hand-made DWPose ONNX files (one person in the middle, fixed
keypoints), a V3 set whose text / image widths are umT5's and ViT-H's, a tiny Wan LoRA under the placeholder name
of v3_flash_lora, and core's umT5 / CLIP vision / Wan VAE from ComfyUI's own classes (tests/_comfy_core_tiny.py).
The shared media are cut short (half a second of speech, one second of the driving video) and uploaded with the
queue client (``POST /upload/image``), put into each workflow with its substitution (``build_prompt``), sizes and
steps made small, then ``POST /prompt`` (the server's validation: no node_errors) and ``/history`` until done. Each
run must succeed and save its mp4 (frames and the speech in it); the evaluate workflow must also show its report.
Also: the server lists every node of the pack and the UI workflows in its template browser; v1_audio with the
Sampler's optional ``deep_cache`` = 2 (not in the shipped file) is accepted and renders another video than
``deep_cache`` = 0 at the same seed; a prompt with a renamed combo value and a missing widget (what a node change
would do to a saved workflow) is refused with both nodes named.

Run it with the python of a ComfyUI environment (ComfyUI's requirements.txt; the frontend, templates and docs
packages are not needed: an empty web root is served) that also has the pack's requirements and its ``dev`` extra
(pytest, onnx). About 7 minutes on two busy CPU cores, most of it V3's full-size umT5 and ViT-H.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("COMFYUI_PATH")
WORKFLOWS = sorted(p.stem for p in (ROOT / "workflows" / "api").glob("*.json"))
pytestmark = [pytest.mark.skipif(not COMFY, reason="set COMFYUI_PATH to a ComfyUI checkout to queue the shipped "
                                                    "workflows on a real ComfyUI server"),
              pytest.mark.slow]

# widget values that make a run small: 64 px, 2 steps (the workflows' other values are kept)
FAST = {"EchoMimicReferencePrep": {"width": 64, "height": 64}, "EchoMimicFaceTrack": {"width": 64, "height": 64},
        "EchoMimicSampler": {"steps": 2}, "EchoMimicV3Sampler": {"size": 64, "steps": 2}}
PROMPT_TIMEOUT = 1800.0  # seconds per run (V3's full-size umT5 alone takes a minute or more on a small CPU)


# ---------------------------------------------------------------------------------------------- models and media
def _one_person_detector(path: Path) -> Path:
    """A YOLOX-shaped detector (1, 8400, 6) that always finds one person: a 512 px box centred in the letterbox."""
    from onnx import TensorProto, helper

    from tests.test_pose_dwpose import _const, _save

    raw = np.zeros((1, 8400, 6), np.float32)
    raw[..., :2] = 0.5
    raw[0, 8000 + 10 * 20 + 10] = [0.0, 0.0, np.log(16.0), np.log(16.0), 1.0, 1.0]  # stride-32 cell (10, 10)
    nodes = [helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0), _const("zero", np.array(0.0, np.float32)),
             helper.make_node("Mul", ["m", "zero"], ["z"]), _const("base", raw), helper.make_node("Add", ["base", "z"], ["output"])]
    graph = helper.make_graph(nodes, "one_person", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8400, 6])])
    return _save(graph, path)


def _v3_models(models: Path) -> None:
    """models/echomimic/v3-flash: the tiny V3 set with umT5's text width (4096) and ViT-H's image width (1280), which
    core's encoders hand the sampler; models/loras/<the LoRA workflow's placeholder>: a tiny Wan LoRA for it."""
    from echomimic_lib.models.wan.tiny import TINY_V3, write_tiny_v3
    from tests._v3_tiny import tiny_model, write_release
    from tests._wan_lora import make_parts, write_layout

    root = write_tiny_v3(models / "echomimic" / "v3-flash")
    model = tiny_model(seed=1, cfg=replace(TINY_V3, text_dim=4096, clip_dim=1280))
    write_release(model, root, v3_keys="audio")
    lora = json.loads((ROOT / "workflows" / "api" / "v3_flash_lora.json").read_text())
    (name,) = [n["inputs"]["lora"] for n in lora.values() if n["class_type"] == "EchoMimicV3Lora"]
    (models / "loras").mkdir(parents=True, exist_ok=True)
    write_layout(make_parts(model, seed=3, gain=0.5), "comfyui", models / "loras" / name)


def _media(shared: Path, folder: Path) -> SimpleNamespace:
    """Short copies of the shared media (read in place, written only here)."""
    import cv2

    from echomimic_lib.io import video_io
    import echomimic_lib.io.audio_file as audio_file
    from tests._media import write_wav

    folder.mkdir()
    portrait, half = folder / "echomimic_portrait.png", folder / "echomimic_halfbody.png"
    cv2.imwrite(str(portrait), cv2.resize(cv2.imread(str(shared / "images" / "portrait_a.png")), (360, 480), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(half), cv2.resize(cv2.imread(str(shared / "images" / "halfbody_0035.png")), (400, 440), interpolation=cv2.INTER_AREA))
    wav, sr = audio_file.read_audio(shared / "audio" / "echomimic_en.wav")
    speech = write_wav(folder / "echomimic_speech.wav", wav[0, : sr // 2], sr)
    clip = video_io.read_video(shared / "video" / "driving_a.mp4", max_frames=24, with_audio=False)
    frames = np.stack([cv2.resize(f, (256, 256), interpolation=cv2.INTER_AREA) for f in clip.frames])
    driving, person = folder / "echomimic_driving.mp4", folder / "echomimic_person.mp4"
    video_io.write_video(driving, frames, 24.0)
    video_io.write_video(person, frames[:8], 24.0)
    return SimpleNamespace(portrait=portrait, halfbody=half, speech=speech, driving=driving, person=person)


def _base_folder(base: Path, shared: Path) -> None:
    from echomimic_lib.tiny import make_tiny
    from tests.test_pose_dwpose import build_peak_pose, layout_positions

    for name in ("custom_nodes", "input", "output", "temp", "user"):
        (base / name).mkdir(parents=True)
    os.symlink(ROOT, base / "custom_nodes" / "comfyui-echomimic", target_is_directory=True)
    models = base / "models"
    make_tiny(models, layout="comfyui")
    em = models / "echomimic"
    shutil.copytree(shared / "mediapipe", em / "mediapipe")
    (em / "poses" / "01").mkdir(parents=True)
    for i in range(24):
        shutil.copy(shared / "pose" / "01" / f"{i}.npy", em / "poses" / "01")
    (em / "dwpose").mkdir()
    _one_person_detector(em / "dwpose" / "yolox_l.onnx")
    build_peak_pose(em / "dwpose" / "dw-ll_ucoco_384.onnx", layout_positions())
    _v3_models(models)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([COMFY, str(ROOT)]), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_comfy_core_tiny.py"), str(models)], cwd=COMFY, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


# ---------------------------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


class Server(SimpleNamespace):
    def log_tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]


@pytest.fixture(scope="module")
def comfy(tmp_path_factory, shared_data):
    from echomimic_lib.jobs import queue_client as qc

    tmp = tmp_path_factory.mktemp("comfy_real")
    base = tmp / "base"
    _base_folder(base, shared_data)
    media = _media(shared_data, tmp / "media")
    (tmp / "frontend").mkdir()  # an empty web root: the API needs no frontend package
    port = _free_port()
    log = tmp / "comfyui.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--front-end-root", str(tmp / "frontend"), "--preview-method", "none", "--database-url", "sqlite:///:memory:"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")  # (checkout untouched)
    env.pop("PYTHONPATH", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=COMFY, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(url=f"http://127.0.0.1:{port}", base=base, log=log, proc=proc, seeds=[])
    try:
        end = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ComfyUI exited with {proc.returncode} while starting:\n{server.log_tail()}")
            try:
                server.info = _get(f"{server.url}/object_info")
                break
            except OSError:
                if time.monotonic() > end:
                    pytest.fail(f"ComfyUI did not answer within 300 s:\n{server.log_tail()}")
                time.sleep(1.0)
        server.names = {k: qc.upload(server.url, getattr(media, k)) for k in vars(media)}
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def _prompt(server, name: str, extra: dict | None = None, seed: int | None = None) -> dict:
    """The workflow with the uploaded files, a per-run prefix and its own seed (the queue client's substitution; the
    seed also keeps ComfyUI from answering a sampler from its cache of an earlier run), and the small sizes."""
    from echomimic_lib.jobs import queue_client as qc

    template = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    n = server.names
    if seed is None:
        seed = 1000 + len(server.seeds)
        server.seeds.append(seed)
    image = n["halfbody"] if "echomimic_halfbody.png" in json.dumps(template) else n["portrait"]
    if name == "v1_dub_video":
        prompt = qc.build_prompt(template, None, n["speech"], f"real/{name}", seed, n["person"], video_required=True)
    else:
        prompt = qc.build_prompt(template, image, n["speech"], f"real/{name}", seed, n["driving"])
    for node in prompt.values():
        for key, value in FAST.get(node["class_type"], {}).items():
            assert key in node["inputs"], f"{name}: {node['class_type']} has no input {key}"
            node["inputs"][key] = value
        node["inputs"].update((extra or {}).get(node["class_type"], {}))  # (may add optional inputs)
    return prompt


def _run(server, prompt: dict) -> dict:
    from echomimic_lib.jobs import queue_client as qc

    try:
        pid = qc.post_prompt(server.url, prompt, "pytest", timeout=120)
        return qc.wait_for(server.url, pid, timeout=PROMPT_TIMEOUT, poll=1.0)
    except qc.QueueError as exc:
        pytest.fail(f"{exc}\n--- ComfyUI log ---\n{server.log_tail()}")


def _saved_video(server, entry: dict, name: str) -> dict:
    from echomimic_lib.io.video_io import probe

    videos = [server.base / "output" / f for f in _files(entry, "output") if f.endswith(".mp4")]
    assert len(videos) == 1 and videos[0].name.startswith(name) and videos[0].stat().st_size > 0, entry.get("outputs")
    info = probe(videos[0])
    assert info["frames"] > 0 and info["audio_seconds"] and info["audio_seconds"] <= 0.6, info
    return info


def _files(entry: dict, kind: str) -> list[str]:
    return ["/".join(x for x in (item.get("subfolder"), item["filename"]) if x)
            for out in entry.get("outputs", {}).values() for item in out.get("images", []) if item.get("type") == kind]


def test_the_server_lists_every_node_and_workflow_of_the_pack(comfy):
    from tests._pack import load_pack

    missing = sorted(set(load_pack().NODE_CLASS_MAPPINGS) - set(comfy.info))
    assert not missing, f"not registered in the real ComfyUI: {missing}\n{comfy.log_tail()}"
    failed = [line for line in comfy.log.read_text(errors="replace").splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not any("echomimic" in line for line in failed), failed
    ui = sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))
    listed = _get(f"{comfy.url}/workflow_templates")  # the template browser's list: the UI files, each once
    assert sorted(listed.get("comfyui-echomimic", [])) == ui == WORKFLOWS, listed
    served = _get(f"{comfy.url}/api/workflow_templates/comfyui-echomimic/v1_audio.json")
    assert served == json.loads((ROOT / "workflows" / "v1_audio.json").read_text())


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_shipped_workflow_runs_in_real_comfyui(comfy, name):
    prompt = _prompt(comfy, name)
    entry = _run(comfy, prompt)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"], entry["status"]
    info = _saved_video(comfy, entry, name)
    previews = {k for k, n in prompt.items() if n["class_type"] == "PreviewImage"}
    shown = {k for k, out in entry["outputs"].items() if any(i.get("type") == "temp" for i in out.get("images", []))}
    assert shown == previews, entry["outputs"]
    for f in _files(entry, "temp"):  # the pictures the previews show
        assert (comfy.base / "temp" / f).stat().st_size > 0
    if name == "v1_audio_evaluate":
        (report,) = [out["text"][0] for out in entry["outputs"].values() if "text" in out]  # Preview Any's text
        scores = json.loads(report.strip().splitlines()[-1])  # the table, then its JSON line
        assert scores["frames"] == info["frames"] and scores["fps"] == 24.0, report
    if name.startswith("v3"):
        assert info["fps"] == 25.0
    else:
        assert info["fps"] == 24.0


def test_the_samplers_optional_deep_cache_is_accepted_and_reaches_the_sampler(comfy):
    """v1_audio with the Sampler's optional deep_cache (not in the shipped file) = 2, and = 0, at the same seed: the
    server accepts both, and the videos differ (the value was used, not dropped on the way)."""
    from echomimic_lib.io.video_io import read_video

    frames = {}
    for n in (2, 0):
        prompt = _prompt(comfy, "v1_audio", {"EchoMimicSampler": {"deep_cache": n, "steps": 3}}, seed=77)
        (sampler,) = [v for v in prompt.values() if v["class_type"] == "EchoMimicSampler"]
        assert sampler["inputs"]["deep_cache"] == n and sampler["inputs"]["seed"] == 77
        entry = _run(comfy, prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]
        _saved_video(comfy, entry, "v1_audio")
        (video,) = [f for f in _files(entry, "output") if f.endswith(".mp4")]
        frames[n] = read_video(comfy.base / "output" / video, with_audio=False).frames.astype(np.int16)
    assert frames[2].shape == frames[0].shape and np.abs(frames[2] - frames[0]).mean() > 0.5


def test_a_workflow_that_drifted_from_the_nodes_is_refused_naming_the_nodes(comfy):
    """What the runs above would catch after a node change: the server's own validation refuses a combo value the
    loader no longer offers and a missing widget, and the queue client names both nodes."""
    from echomimic_lib.jobs import queue_client as qc

    prompt = _prompt(comfy, "v1_audio")
    (loader,) = [k for k, v in prompt.items() if v["class_type"] == "EchoMimicModelLoader"]
    (sampler,) = [k for k, v in prompt.items() if v["class_type"] == "EchoMimicSampler"]
    prompt[loader]["inputs"]["version"] = "V1 audio (renamed)"
    del prompt[sampler]["inputs"]["context_overlap"]
    with pytest.raises(qc.QueueError) as err:
        qc.post_prompt(comfy.url, prompt, "pytest", timeout=120)
    msg = str(err.value)
    assert "HTTP 400" in msg and f"node {loader} (EchoMimicModelLoader)" in msg and "V1 audio (renamed)" in msg, msg
    assert f"node {sampler} (EchoMimicSampler)" in msg and "context_overlap" in msg, msg


def test_the_samplers_resumable_and_the_v3_loaders_fp8_run_in_real_comfyui(comfy):
    """Optional inputs added later, on the real server: v1_audio with the Sampler's resumable on gives the video of the
    run without it (same seed) and leaves no state behind; v3_flash_lora with the V3 Loader's fp8 on runs through
    ComfyUI's own ModelPatcher (castable layers, the LoRA patched into fp8 weights) and saves its video."""
    from echomimic_lib.io.video_io import read_video

    frames = {}
    for on in (True, False):
        prompt = _prompt(comfy, "v1_audio", {"EchoMimicSampler": {"resumable": on, "steps": 2}}, seed=91)
        entry = _run(comfy, prompt)
        assert entry["status"]["status_str"] == "success", entry["status"]
        (video,) = [f for f in _files(entry, "output") if f.endswith(".mp4")]
        frames[on] = read_video(comfy.base / "output" / video, with_audio=False).frames
    assert np.array_equal(frames[True], frames[False])
    state = comfy.base / "output" / "echomimic" / ".resume"
    assert state.is_dir() and not list(state.iterdir())  # made by the resumable run, emptied when it was done
    prompt = _prompt(comfy, "v3_flash_lora", {"EchoMimicV3Loader": {"fp8": True}})
    (loader,) = [v for v in prompt.values() if v["class_type"] == "EchoMimicV3Loader"]
    assert loader["inputs"]["fp8"] is True
    entry = _run(comfy, prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    _saved_video(comfy, entry, "v3_flash_lora")
