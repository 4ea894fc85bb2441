"""``echomimic-train v3-fit`` / ``v3-export`` on the tiny EchoMimicV3 set and a synthetic 25-fps dataset: the adapters
learn (a fixed evaluation loss falls), a resumed run equals the uninterrupted one bit for bit, checkpoints hold only
the adapters, the exported Wan LoRA merged by the inference's reader gives the trained network's output, and every
bad input stops before the encoders or the transformer load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import ConfigError
from trainer.data.store import ClipWriter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 32


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    from echomimic_lib.models.wan.tiny import ensure_tiny_v3

    return ensure_tiny_v3(tmp_path_factory.mktemp("v3train") / "v3-flash")


def dataset(root: Path, fps: float = 25.0, clips: int = 2, frames: int = 13, kind: str = "headshot", sources=()) -> Path:
    """Prepared clips written directly: moving textured frames and the shared speech."""
    from echomimic_lib.audio.wav2vec import resample_16k
    from echomimic_lib.io.audio_file import read_audio

    samples, rate = read_audio(DATA / "audio" / "echomimic_en.wav")
    mono = resample_16k(samples.mean(axis=0), rate)
    rng = np.random.default_rng(0)
    rows = []
    for c in range(clips):
        cid = f"spk{c}__clip"
        w = ClipWriter(root / "shard-00000" / cid)
        base = rng.integers(0, 255, (SIZE + 8, SIZE, 3), dtype=np.uint8)
        for f in range(frames):
            w.add_frame(np.roll(base, f, axis=1))
        wave = mono[c * 8000: c * 8000 + int(frames / fps * 16000)]
        meta = {"id": cid, "fps": fps, "kind": kind, "size": SIZE, **({"source": str(sources[c])} if sources else {})}
        w.finish(meta, {"audio16k": wave})
        rows.append({"id": cid, "path": f"shard-00000/{cid}", "shard": 0, "num_frames": frames, "fps": fps, "kind": kind})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def config(tiny_v3, data, out, *over):
    from trainer.v3.config import load_v3_config

    return load_v3_config(None, [f"output_dir={out}", f"model.path={tiny_v3}", f"data.roots=[{data}]", "data.frames=9",
                                 f"data.width={SIZE}", f"data.height={SIZE}", "mixed_precision=no", "lora.rank=4",
                                 "lora.alpha=4", "optim.lr=0.01", "steps=4", "checkpoint.every=2", "log_every=1", *over])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return dataset(tmp_path_factory.mktemp("v3data"))


def adapters(ckpt: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def test_fit_checkpoints_only_adapters_and_resume_is_exact(tiny_v3, data, tmp_path, caplog):
    from trainer.v3.loop import fit_v3

    whole = fit_v3(config(tiny_v3, data, tmp_path / "whole"))
    assert whole["step"] == 4 and whole["windows"] == 2  # 13 frames hold one 9-frame window per clip
    ckpts = sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    tensors = adapters(ckpts[-1])
    assert tensors and all(".lora_A." in k or ".lora_B." in k for k in tensors)
    assert any(float(v.abs().max()) > 0 for k, v in tensors.items() if ".lora_B." in k)  # B left zero: nothing trained
    log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in log if "loss" in r)

    part = config(tiny_v3, data, tmp_path / "part")
    assert fit_v3(part, stop_after=2)["step"] == 2
    with pytest.raises(FileExistsError, match="--resume"):  # a second fresh run would mix two runs' checkpoints
        fit_v3(part)
    assert fit_v3(part, resume=True)["step"] == 4
    assert "windows changed" not in caplog.text
    resumed = adapters(tmp_path / "part" / "checkpoints" / "step-00000004")
    assert tensors.keys() == resumed.keys()
    for k in tensors:
        assert torch.equal(tensors[k], resumed[k]), k


def test_adapters_learn_the_windows(tiny_v3, data, tmp_path):
    """A fixed draw of sigmas and noise over both windows: its loss falls after 12 steps."""
    from echomimic_lib.models.wan import load_v3_transformer
    from echomimic_lib.models.wan.sources import resolved_files
    from trainer.v3.encode import EncodedWindows, encoder_id, prompt_states
    from trainer.v3.flow import flow_loss, training_sigmas
    from trainer.v3.loop import fit_v3, make_batch
    from trainer.v3.lora import cast_base_, inject
    from trainer.v3.windows import list_windows

    cfg = config(tiny_v3, data, tmp_path / "run", "steps=12", "checkpoint.every=12", "data.audio_drop=0")
    fit_v3(cfg)
    files = resolved_files(tiny_v3)
    windows = list_windows(cfg.data)
    cache = EncodedWindows(tmp_path / "run" / "encoded", windows, SIZE, SIZE, encoder_id(files, torch.float32))
    assert not cache.missing()
    prompts = prompt_states(files, [cfg.data.prompt], tiny_v3 / "prompt_cache", "cpu", torch.float32)
    batch = make_batch(cache, prompts, windows, [0, 1], torch.zeros(2, dtype=torch.bool), "cpu", torch.float32)
    model, _ = load_v3_transformer(files["base"], files["flash"])
    inject(model, cfg)
    cast_base_(model, torch.float32)
    sigmas = training_sigmas(5.0)

    def evaluate():
        with torch.no_grad():
            return sum(float(flow_loss(model, batch, cfg.noise, torch.Generator().manual_seed(s), sigmas)[0]) for s in range(8))

    before = evaluate()
    trained = adapters(tmp_path / "run" / "checkpoints" / "step-00000012")
    model.load_state_dict(trained, strict=False)
    after = evaluate()
    assert after < 0.9 * before, (before, after)


def test_exported_lora_merged_by_the_inference_reader_equals_the_trained_network(tiny_v3, data, tmp_path):
    from echomimic_lib.lora.wan_files import apply_wan_lora, read_wan_lora
    from echomimic_lib.models.wan import load_v3_transformer
    from echomimic_lib.models.wan.sources import resolved_files
    from echomimic_lib.models.wan.tiny import TINY_V3
    from tests._v3_tiny import inputs
    from trainer.cli import main as train_main
    from trainer.v3.lora import cast_base_, inject

    from trainer.v3.loop import fit_v3

    cfg = config(tiny_v3, data, tmp_path / "run", "steps=2", "lora.alpha=8",
                 "lora.targets=[self_attn.q, cross_attn.k_audio, ffn.2]")
    fit_v3(cfg)
    dest = tmp_path / "out" / "me.safetensors"
    assert train_main(["v3-export", str(tmp_path / "run"), str(dest), "--dtype", "float32"]) == 0
    f = read_wan_lora(dest)
    assert all(k.startswith("diffusion_model.blocks.") for k in f.keys.values())
    files = resolved_files(tiny_v3)
    trained, _ = load_v3_transformer(files["base"], files["flash"])
    inject(trained, cfg)
    cast_base_(trained, torch.float32)
    trained.load_state_dict(adapters(tmp_path / "run" / "checkpoints" / "step-00000002"), strict=False)
    merged, _ = load_v3_transformer(files["base"], files["flash"])
    plain = {k: v.clone() for k, v in merged.state_dict().items()}
    apply_wan_lora(merged, dest, 1.0)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, plain[k])]
    assert {k.rsplit(".", 2)[-2] for k in changed} == {"q", "k_audio", "2"} and len(changed) == 3 * 2
    x = inputs(TINY_V3)
    with torch.no_grad():
        want, got = trained(**x), merged(**x)
        base_out = load_v3_transformer(files["base"], files["flash"])[0](**x)
    assert not torch.allclose(want, base_out, atol=1e-4)  # the adapters changed the output
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    assert train_main(["v3-export", str(tmp_path / "run"), str(dest)]) == 2  # never replaced without --force
    assert train_main(["v3-export", str(tmp_path / "run"), str(dest), "--force"]) == 0
    (tmp_path / "dir.safetensors").mkdir()
    assert train_main(["v3-export", str(tmp_path / "run"), str(tmp_path / "dir.safetensors"), "--force"]) == 2


def test_gradient_checkpointing_gives_the_same_gradients():
    from tests._v3_tiny import inputs, tiny_model

    grads = []
    for on in (False, True):
        model = tiny_model(3)
        model.checkpoint_blocks = on
        out = model(**inputs())
        out.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("over, match", [
    (["data.frames=8"], "4k\\+1"),
    (["data.width=40"], "multiple of 16"),
    (["lora.targets=[to_q]"], "choose from"),
    (["noise.weighting=sigma_sqrt"], "noise.weighting"),
    (["optim.lrr=1"], "did you mean 'lr'"),
    (["distributed.validation_timeout_s=2000"], "validation_timeout_s must be below"),
    (["distributed.timeout_s=0"], "must be > 0"),
])
def test_bad_settings_are_named(tiny_v3, data, tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        config(tiny_v3, data, tmp_path / "run", *over)


def test_bad_data_stops_before_any_network_loads(tiny_v3, tmp_path, monkeypatch):
    import trainer.v3.encode as enc
    from trainer.v3.loop import fit_v3

    def no(*a, **k):
        raise AssertionError("an encoder loaded before the data was checked")

    monkeypatch.setattr(enc.Encoders, "__init__", no)
    wrong = dataset(tmp_path / "d24", fps=24.0)
    with pytest.raises(ConfigError, match="--fps 25"):
        fit_v3(config(tiny_v3, wrong, tmp_path / "a"))
    short = dataset(tmp_path / "short", frames=7)
    with pytest.raises(ConfigError, match="longest has 7"):
        fit_v3(config(tiny_v3, short, tmp_path / "b"))
    (tmp_path / "caps.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="data.captions"):
        fit_v3(config(tiny_v3, dataset(tmp_path / "ok"), tmp_path / "c", f"data.captions={tmp_path / 'caps.json'}"))
    with pytest.raises(Exception, match="model|missing|not found|v3-flash"):
        fit_v3(config(tmp_path / "no_models", dataset(tmp_path / "ok2"), tmp_path / "d"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cache_is_reused_and_keyed_by_size(tiny_v3, tmp_path):
    from echomimic_lib.models.wan.sources import resolved_files
    from trainer.v3.encode import EncodedWindows, Encoders, encoder_id
    from trainer.v3.windows import list_windows

    d = dataset(tmp_path / "data", kind="pose", clips=1)
    cfg = config(tiny_v3, d, tmp_path / "run", "data.stride=2")
    windows = list_windows(cfg.data)
    assert [w.start for w in windows] == [0, 2, 4] and all(w.silent for w in windows)
    files = resolved_files(tiny_v3)
    made = []

    def make():
        made.append(1)
        return Encoders(files, "cpu", torch.float32)

    cache = EncodedWindows(tmp_path / "enc", windows, SIZE, SIZE, encoder_id(files, torch.float32))
    assert cache.fill(make) == 3 and cache.fill(make) == 0 and len(made) == 1  # the second fill loads no encoder
    assert float(cache.load(0)["audio"].abs().max()) == 0  # a pose clip has no speech: silent audio
    other = EncodedWindows(tmp_path / "enc", windows, 48, SIZE, encoder_id(files, torch.float32))
    assert len(other.missing()) == 3
    assert not list((tmp_path / "enc").rglob("*.partial*"))


def test_validation_clip_is_what_animate_renders_with_the_exported_lora(tiny_v3, data, tmp_path):
    import cv2

    from echomimic_lib.cli import main as animate_main
    from echomimic_lib.io.video_io import read_video
    from trainer.cli import main as train_main
    from trainer.v3.loop import fit_v3

    ref = cv2.resize(cv2.imread(str(DATA / "images" / "portrait_a.png")), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "ref.png"), ref)
    wav = DATA / "audio" / "echomimic_en.wav"
    fit_v3(config(tiny_v3, data, tmp_path / "run", "steps=2", f"validation.reference={tmp_path / 'ref.png'}",
                  f"validation.audio={wav}", "validation.frames=5", "validation.steps=2"))
    clip = tmp_path / "run" / "samples" / "step-00000002.mp4"
    got = read_video(clip, with_audio=False).frames
    assert got.shape == (5, SIZE, SIZE, 3)
    lora = tmp_path / "me.safetensors"
    assert train_main(["v3-export", str(tmp_path / "run"), str(lora), "--dtype", "float32"]) == 0
    out = tmp_path / "animate.mp4"
    assert animate_main(["animate", "--version", "v3-flash", "--models", str(tiny_v3.parent), "--offline", "--reference",
                         str(tmp_path / "ref.png"), "--audio", str(wav), "-o", str(out), "--length", "5", "--steps", "2",
                         "--lora", str(lora), "--device", "cpu"]) == 0
    want = read_video(out, with_audio=False).frames
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1, (diff.mean(), diff.max())  # equal up to one level of rounding (identical when measured)
    base = tmp_path / "base.mp4"
    assert animate_main(["animate", "--version", "v3-flash", "--models", str(tiny_v3.parent), "--offline", "--reference",
                         str(tmp_path / "ref.png"), "--audio", str(wav), "-o", str(base), "--length", "5", "--steps", "2",
                         "--device", "cpu"]) == 0
    assert np.abs(read_video(base, with_audio=False).frames.astype(int) - want.astype(int)).mean() > 2  # the LoRA shows


def test_validation_inputs_are_checked_first(tiny_v3, data, tmp_path):
    from trainer.v3.loop import fit_v3

    with pytest.raises(ConfigError, match="both reference and audio"):
        config(tiny_v3, data, tmp_path / "a", f"validation.reference={DATA / 'images' / 'portrait_a.png'}")
    with pytest.raises(ConfigError, match="validation: reference .*not found"):
        fit_v3(config(tiny_v3, data, tmp_path / "b", f"validation.reference={tmp_path / 'no.png'}",
                      f"validation.audio={DATA / 'audio' / 'echomimic_en.wav'}"))
    assert not (tmp_path / "b").exists()


def _launch2(cfg: Path, *extra):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainer", "v3-fit",
                           "--config", str(cfg), *extra], cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_one_adapter_set_and_resume_exactly(tiny_v3, tmp_path):
    """2 CPU processes (gloo): the windows are encoded once between them, and a run stopped at step 2 and resumed by
    a new launch ends with the adapters and optimiser state of the uninterrupted run, byte for byte."""
    import shutil

    import yaml

    d = dataset(tmp_path / "data", clips=3)

    def cfg(name, steps):
        c = {"output_dir": str(tmp_path / name), "model": {"path": str(tiny_v3)},
             "data": {"roots": [str(d)], "frames": 9, "width": SIZE, "height": SIZE, "cache_dir": str(tmp_path / "enc")},
             "lora": {"rank": 4, "alpha": 4}, "optim": {"lr": 0.01}, "steps": steps, "checkpoint": {"every": 2, "keep_last": 5},
             "mixed_precision": "no", "log_every": 1}
        path = tmp_path / f"{name}-{steps}.yaml"
        path.write_text(yaml.safe_dump(c))
        return path

    r = _launch2(cfg("whole", 4))
    assert r.returncode == 0, r.stderr[-4000:]
    assert len(list((tmp_path / "enc").rglob("*.safetensors"))) == 3
    # the run as if stopped after step 2 (its folder holds exactly the uninterrupted run's step-2 checkpoint, written by
    # the save that ends a 2-step run), resumed by a new launch: two launches instead of three
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-00000002", tmp_path / "part" / "checkpoints" / "step-00000002")
    r = _launch2(cfg("part", 4), "--resume")
    assert r.returncode == 0, r.stderr[-4000:]
    from .test_trainer_helpers import rows

    assert [x["step"] for x in rows(tmp_path / "part")] == [3, 4]  # went on from the checkpoint, not from the start
    a, b = (tmp_path / n / "checkpoints" / "step-00000004" for n in ("whole", "part"))
    for name in ("model.safetensors", "optimizer.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in a.iterdir()}


def test_the_documented_config_is_valid():
    """docs/training.md §11's YAML reads with the strict reader (a renamed key fails here, not for a user)."""
    import re

    import yaml

    from trainer.config_file import from_dict
    from trainer.v3.config import V3TrainConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    section = text[text.index("## 11. EchoMimicV3"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = from_dict(V3TrainConfig, yaml.safe_load(block)).validate()
    assert cfg.data.frames == 49 and cfg.validation.reference == "anna.png"


def test_captions_by_id_file_name_or_sidecar_text(tmp_path, caplog):
    from trainer.v3.config import V3Data
    from trainer.v3.windows import list_windows

    vids = [tmp_path / "videos" / f"{n}.mp4" for n in ("anna", "ben", "cleo")]
    vids[0].parent.mkdir()
    vids[1].with_suffix(".txt").write_text("  Ben is talking.\n")
    vids[2].with_suffix(".txt").write_text("ignored: the captions file names this clip")
    d = dataset(tmp_path / "data", clips=3, sources=vids)
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"cleo": "Cleo speaks.", "spk0__clip": "Anna speaks.", "nobody": "x"}))
    got = {w.clip_id: w.prompt for w in list_windows(V3Data(roots=[str(d)], frames=9, captions=str(caps)))}
    assert got == {"spk0__clip": "Anna speaks.", "spk1__clip": "Ben is talking.", "spk2__clip": "Cleo speaks."}
    assert "match no clip" in caplog.text and "'nobody'" in caplog.text
    plain = {w.prompt for w in list_windows(V3Data(roots=[str(dataset(tmp_path / "d2", clips=1))], frames=9))}
    assert plain == {"A person is speaking."}


def test_the_command_lines_from_videos_to_an_animation(tiny_v3, tmp_path):
    """docs/training.md §11 end to end through the commands: prepare --kind full (no detector, no whisper), v3-fit
    from a YAML file, v3-export, animate --version v3-flash --lora."""
    import shutil

    import yaml

    from echomimic_lib.cli import main as animate_main
    from echomimic_lib.io.video_io import read_video
    from trainer.cli import main as train_main

    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(DATA / "video" / "driving_a.mp4", videos / "talk.mp4")
    shutil.copy(DATA / "audio" / "echomimic_en.wav", videos / "talk.wav")
    (videos / "talk.txt").write_text("A person is talking.")
    assert train_main(["prepare", str(videos), str(tmp_path / "data"), "--kind", "full", "--size", "64", "--max-seconds", "1.2",
                       "-q"]) == 0
    cfg = {"output_dir": str(tmp_path / "run"), "model": {"path": str(tiny_v3)},
           "data": {"roots": [str(tmp_path / "data")], "frames": 9, "width": SIZE, "height": SIZE},
           "lora": {"rank": 4, "alpha": 4}, "optim": {"lr": 0.01}, "steps": 2, "mixed_precision": "no"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main(["v3-fit", "--config", str(tmp_path / "run.yaml")]) == 0
    assert train_main(["v3-fit", "--config", str(tmp_path / "run.yaml")]) == 2  # has checkpoints: --resume or another folder
    lora = tmp_path / "loras" / "talk.safetensors"
    assert train_main(["v3-export", str(tmp_path / "run"), str(lora)]) == 0
    out = tmp_path / "out.mp4"
    assert animate_main(["animate", "--version", "v3-flash", "--models", str(tiny_v3.parent), "--offline", "--reference",
                         str(DATA / "images" / "portrait_a.png"), "--audio", str(videos / "talk.wav"), "-o", str(out),
                         "--length", "5", "--steps", "1", "--lora", str(lora), "--device", "cpu"]) == 0
    assert read_video(out, with_audio=False).frames.shape[0] == 5


def test_a_resume_on_other_windows_is_reported(tiny_v3, tmp_path, caplog):
    from trainer.v3.loop import fit_v3

    d = dataset(tmp_path / "data")
    fit_v3(config(tiny_v3, d, tmp_path / "run", "steps=2"))
    more = dataset(tmp_path / "more", clips=3)
    fit_v3(config(tiny_v3, more, tmp_path / "run", "steps=3"), resume=True)
    assert "training windows changed" in caplog.text and "(2 then, 3 now" in caplog.text


def test_bf16_run_with_adapters_in_the_autocast_dtype_learns(tiny_v3, data, tmp_path):
    """lora.fp32_inputs: false under bf16 mixed precision: finite losses, the adapters move, they stay float32."""
    from accelerate.state import AcceleratorState

    from trainer.v3.loop import fit_v3

    AcceleratorState._reset_state(True)  # accelerate keeps one mixed precision per process
    try:
        fit_v3(config(tiny_v3, data, tmp_path / "run", "mixed_precision=bf16", "lora.fp32_inputs=false", "steps=2"))
    finally:
        AcceleratorState._reset_state(True)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    got = adapters(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert all(v.dtype == torch.float32 for v in got.values())
    assert any(float(v.abs().max()) > 0 for k, v in got.items() if ".lora_B." in k)

