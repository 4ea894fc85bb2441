"""The V1/V2 sampler nodes' optional ``resumable`` (ComfyUI stubbed by the bridge's stand-ins, tiny weights): a render
stopped in a middle step (Cancel raised from the progress callback, or out of memory) goes on from its last finished
step when the same prompt runs again, to the frames of a render that never stopped; another seed or input does not
use the state; the state is removed after success, never written with resumable off, and old states are pruned."""
from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pytest
import torch
from tests._pack import load_pack, sub

N = load_pack().NODE_CLASS_MAPPINGS
C = sub("nodes.comfy_bridge")
resume = sub("nodes.resume")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError
SIZE, STEPS, FPS = 64, 4, 24.0
REFERENCE = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def comfy(tiny_comfy_models, tmp_path, monkeypatch):
    """ComfyUI's folders: the tiny weights, an empty output folder, an empty stand-in model manager."""
    monkeypatch.setattr(C, "MODELS_DIR", tiny_comfy_models)
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "output")
    monkeypatch.setattr(C, "MODEL_MANAGER", C.StandInModelManager())
    return tmp_path / "output"


def loader(version="V1 audio", **kw):
    args = dict(dtype="auto", attention="sdpa", keep_loaded=False, weights_folder="auto", vae="auto", auto_download=False)
    return N["EchoMimicModelLoader"]().execute(version, "normal", **{**args, **kw})[0]


def features(handle, shared_data, seconds=1.0):
    from echomimic_lib.io.audio_file import read_audio

    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    clip = {"waveform": torch.from_numpy(np.ascontiguousarray(wav[:, : int(sr * seconds)])).unsqueeze(0), "sample_rate": sr}
    return N["EchoMimicAudioEncoder"]().execute(handle, clip, FPS)[0]


def render(handle, feats, seed=7, reference=REFERENCE, node="EchoMimicSampler", steps=STEPS, **kw):
    """STEPS steps over the audio's 24 frames in windows of 12 (overlap 3): several windows per step."""
    extra = ("echomimic/resume_test",) if node == "EchoMimicSamplerToFile" else ()
    return N[node]().execute(handle, reference, feats, seed, steps, 0.0, SIZE, SIZE, 0, 12, 3, *extra, **kw)


def hook(seen: list, stop_in_step: int | None = None, error=None):
    """The progress hook: records every value, raises ``error`` in the first window of ``stop_in_step`` (1-based)."""
    def progress(value, total, preview):
        seen.append((value, total))
        if stop_in_step is not None and value == (stop_in_step - 1) * (total // STEPS) + 1:
            raise error or C.InterruptProcessingException()

    return progress


def states(output):
    folder = output / "echomimic" / ".resume"
    return sorted(folder.glob("*.resume")) if folder.exists() else []


@pytest.mark.parametrize("stop", ["cancel", pytest.param("out of memory", marks=pytest.mark.slow)])  # (low_vram: slower)
def test_a_stopped_render_goes_on_from_its_last_step_to_the_same_frames(comfy, shared_data, monkeypatch, stop):
    handle = loader()
    feats = features(handle, shared_data)
    plain = render(handle, feats)[0]  # resumable off: nothing written
    assert not comfy.exists()
    seen = []
    error = C.InterruptProcessingException() if stop == "cancel" else torch.cuda.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen, 3, error))
    with pytest.raises(type(error)):
        render(handle, feats, resumable=True)
    per_step = seen[0][1] // STEPS
    assert per_step > 1 and len(states(comfy)) == 1  # steps 1 and 2 kept
    # the same prompt again, as after a server restart (the set loaded and the audio encoded again); after running
    # out of memory, with the loader's low_vram switched on (same output, same state)
    handle = loader(low_vram=stop != "cancel")
    again = []
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(again))
    frames = render(handle, features(handle, shared_data), resumable=True)[0]
    assert again[0][0] == 2 * per_step + 1 and len(again) == (STEPS - 2) * per_step  # only steps 3 and 4 ran
    assert torch.equal(frames, plain)  # bit-equal to the render that never stopped
    assert states(comfy) == []  # removed after success


def test_another_seed_or_input_does_not_use_the_state(comfy, shared_data, monkeypatch, caplog):
    handle = loader()
    feats = features(handle, shared_data)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook([], 3))
    with pytest.raises(C.InterruptProcessingException):
        render(handle, feats, seed=5, resumable=True)
    (kept,) = states(comfy)
    before = kept.read_bytes()
    for kw in ({"seed": 6}, {"reference": REFERENCE.flip(1)}):  # another seed, another input (settings: the next test)
        seen = []
        monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen))
        render(handle, feats, **{"seed": 5, **kw}, resumable=True)
        assert seen[0][0] == 1 and len(seen) == seen[0][1]  # every step, from the first
        assert states(comfy) == [kept] and kept.read_bytes() == before  # not used, not touched
    seen = []
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen))
    with caplog.at_level(logging.INFO):
        render(handle, feats, seed=5, resumable=True)  # the request that wrote it
    assert seen[0][0] > 1 and "went on after step 2" in caplog.text and states(comfy) == []


def test_the_fingerprint_covers_the_model_and_leaves_out_what_keeps_the_output(comfy, shared_data):
    handle = loader()
    feats = features(handle, shared_data)
    settings = sub("echomimic_lib.pipeline").settings_for("v1-audio", seed=7, steps=STEPS, width=SIZE, height=SIZE)
    inputs = {"reference": REFERENCE, "audio": feats, "mask": None, "landmarks": None, "poses": None}

    def key(h=handle, s=settings, **changed):
        return resume.checkpoint(h, s, {**inputs, **changed}).fingerprint

    base = key()
    assert key() == base == resume.checkpoint(handle, settings, dict(inputs)).fingerprint
    same = [key(dataclasses.replace(handle, key=handle.key[:7] + (True, False, True))),  # low_vram, compile
            key(s=dataclasses.replace(settings, cuda_graphs=True)), key(h=loader(low_vram=True, keep_loaded=True))]
    assert same == [base] * 3
    wave = feats.audio["waveform"].clone()
    wave[0, 0, 100] += 0.01
    other = [key(h=dataclasses.replace(handle, fp8=True)),
             key(h=dataclasses.replace(handle, key=handle.key + (("lora", "/x/a.safetensors", 1.0),))),
             key(h=dataclasses.replace(handle, key=handle.key + (("lora", "/x/a.safetensors", 0.5),))),
             key(s=dataclasses.replace(settings, cfg=1.5)), key(s=dataclasses.replace(settings, context_overlap=settings.context_overlap + 1)),
             key(audio=dataclasses.replace(feats, audio={**feats.audio, "waveform": wave})),
             key(mask=torch.ones(SIZE, SIZE)), key(mask=torch.zeros(SIZE, SIZE))]
    assert len({base, *other}) == len(other) + 1
    denoiser = handle.models.files["denoiser"]  # a weight file written again: another model
    st = os.stat(denoiser)
    os.utime(denoiser, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        assert key() != base
    finally:
        os.utime(denoiser, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert key() == base


def test_the_landmark_and_pose_payloads_are_part_of_the_fingerprint(shared_data):
    digest = sub("echomimic_lib.jobs.resume_plan").value_digest
    payloads = sub("nodes.payloads")
    pixels = np.random.default_rng(0).uniform(0, 64, (5, 478, 2))
    track = payloads.LandmarkTrack(pixels, (64, 64), 24.0)
    base = digest(track)
    assert digest(payloads.LandmarkTrack(pixels.copy(), (64, 64), 24.0)) == base
    moved = pixels.copy()
    moved[3, 10, 0] += 1e-9
    for other in (payloads.LandmarkTrack(moved, (64, 64), 24.0), dataclasses.replace(track, retime="loop"),
                  dataclasses.replace(track, parts=frozenset({"mouth"})), dataclasses.replace(track, fps=25.0)):
        assert digest(other) != base
    assert digest(torch.zeros(3)) != digest(torch.zeros(3, dtype=torch.float64)) != digest(np.zeros(3))
    assert digest({"a": 1, "b": [1.0]}) == digest({"b": [1.0], "a": 1}) != digest({"a": True, "b": [1.0]})
    seq = sub("echomimic_lib.pose").load_pose(shared_data / "pose" / "01")
    poses = payloads.PoseTrack(seq, "continue", ["a note"], "off")
    again = payloads.PoseTrack(sub("echomimic_lib.pose").load_pose(shared_data / "pose" / "01"), "continue", ["a note"])
    assert digest(again) == digest(poses) == digest(dataclasses.replace(poses, sequence=dataclasses.replace(seq, report="x")))
    hands = seq.hands.copy()
    hands[0, 0, 0, 0] += 1e-6
    for other in (dataclasses.replace(poses, stabilize="light"), dataclasses.replace(poses, retime="loop"),
                  dataclasses.replace(poses, sequence=dataclasses.replace(seq, hands=hands))):
        assert digest(other) != digest(poses)

def test_deep_cache_or_something_in_the_way_is_refused_before_any_work(comfy, shared_data, monkeypatch):
    handle = loader()
    feats = features(handle, shared_data)
    seen = []
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen))
    for node in ("EchoMimicSampler", "EchoMimicSamplerToFile"):
        problem = N[node].VALIDATE_INPUTS(width=SIZE, height=SIZE, context_frames=12, context_overlap=3, deep_cache=2,
                                          deep_cache_branch=0, resumable=True)
        assert "'resumable'" in problem and "set 'deep_cache' to 0" in problem
        assert N[node].VALIDATE_INPUTS(width=SIZE, height=SIZE, context_frames=12, context_overlap=3, deep_cache=2,
                                       deep_cache_branch=0, resumable=False) is True
        with pytest.raises(EchoMimicError, match="set 'deep_cache' to 0"):
            render(handle, feats, node=node, deep_cache=2, resumable=True)
    (comfy / "echomimic").mkdir(parents=True, exist_ok=True)  # (the to-file node made it for its mp4)
    (comfy / "echomimic" / ".resume").write_text("not a folder")
    with pytest.raises(EchoMimicError, match="cannot be made a folder"):
        render(handle, feats, resumable=True)
    (comfy / "echomimic" / ".resume").unlink()
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook([], 2))
    with pytest.raises(C.InterruptProcessingException):
        render(handle, feats, resumable=True)
    (kept,) = states(comfy)
    kept.unlink()
    kept.mkdir()  # a folder where this render's state goes: never replaced
    seen.clear()
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen))
    with pytest.raises(EchoMimicError, match="never replaced"):
        render(handle, feats, resumable=True)
    assert seen == [] and kept.is_dir()


def test_states_older_than_a_week_are_pruned_when_a_resumable_render_starts(comfy, shared_data, caplog):
    folder = comfy / "echomimic" / ".resume"
    folder.mkdir(parents=True)
    old, now = time.time() - 8 * 86400, time.time()
    outside = comfy / "elsewhere.resume"
    outside.write_bytes(b"x")
    made = {}
    for name, kind, when in (("old.resume", "file", old), ("recent.resume", "file", now - 86400),
                             (".old.abcd1234.partial", "file", old), ("notes.txt", "file", old),
                             ("dir.resume", "dir", old), ("link.resume", "link", old)):
        p = folder / name
        if kind == "file":
            p.write_bytes(b"state")
        elif kind == "dir":
            p.mkdir()
        else:
            p.symlink_to(outside)
        os.utime(p, (when, when), follow_symlinks=False)
        made[name] = p
    handle = loader()
    feats = features(handle, shared_data)
    render(handle, feats, steps=1)  # resumable off: prunes nothing
    assert all(p.exists() or p.is_symlink() for p in made.values())
    with caplog.at_level(logging.INFO):
        render(handle, feats, steps=1, resumable=True)
    gone = {name for name, p in made.items() if not (p.exists() or p.is_symlink())}
    assert gone == {"old.resume", ".old.abcd1234.partial"}
    assert outside.read_bytes() == b"x" and "old.resume: a render state last written 8.0 days ago" in caplog.text
    assert {p.name for p in folder.iterdir()} == {"recent.resume", "notes.txt", "dir.resume", "link.resume"}


def test_the_to_file_sampler_goes_on_too_and_removes_the_state_once_the_mp4_is_written(comfy, shared_data, monkeypatch):
    handle = loader()
    feats = features(handle, shared_data)
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook([], 3))
    with pytest.raises(C.InterruptProcessingException):
        render(handle, feats, node="EchoMimicSamplerToFile", resumable=True)
    assert len(states(comfy)) == 1 and not list((comfy / "echomimic").glob("*.mp4"))
    seen = []
    monkeypatch.setattr(C, "PROGRESS_HOOK", hook(seen))
    out = render(handle, feats, node="EchoMimicSamplerToFile", resumable=True)
    path = out["result"][0]
    assert os.path.isfile(path) and seen[0][0] > 1 and states(comfy) == []


def test_the_input_is_an_optional_switch_after_the_others_so_saved_workflows_load_unchanged():
    for node in ("EchoMimicSampler", "EchoMimicSamplerToFile"):
        spec = N[node].INPUT_TYPES()
        assert list(spec["optional"])[-1] == "resumable" and "resumable" not in spec["required"]
        kind, opts = spec["optional"]["resumable"]
        assert kind == "BOOLEAN" and opts["default"] is False and "deep_cache" in opts["tooltip"]


def test_the_command_lines_fingerprint_leaves_out_cuda_graphs_as_the_readme_says():
    """``--cuda-graphs`` reached the fingerprint through the sample settings: a render that stopped went on from the
    first step with it added. The settings' cuda_graphs is hashed as off (an existing state of a render without it
    keeps its fingerprint)."""
    plan = sub("echomimic_lib.jobs.resume_plan")
    req = sub("echomimic_lib.jobs.animate").AnimateRequest(reference="r.png", audio="a.wav", output="o.mp4", seed=3)
    settings = sub("echomimic_lib.pipeline").settings_for("v1-audio", seed=3)
    key = plan.fingerprint(req, settings, "cpu", torch.float32, {})
    assert plan.fingerprint(dataclasses.replace(req, cuda_graphs=True), dataclasses.replace(settings, cuda_graphs=True),
                            "cpu", torch.float32, {}) == key
    assert plan.fingerprint(req, dataclasses.replace(settings, seed=4), "cpu", torch.float32, {}) != key
