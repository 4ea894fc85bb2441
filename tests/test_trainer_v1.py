"""V1 end to end on tiny weights and the shared media, CPU: prepare -> stage 1 (loss goes down) -> stage 2
(motion only) -> export -> ``echomimic animate`` renders; SD1.5 image-variations / AnimateDiff initialisation;
exact resume after SIGKILL; a 2-process accelerate (gloo) run; non-finite detection; monitoring files."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_trainer_helpers import (DATA, ENV, MEDIAPIPE, ROOT, events, headshot_dataset, load_ckpt, rows, shared_dir, tiny_weights,
                                        train_cli, v1_config, write_yaml)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _animatediff_file(path: Path) -> Path:
    from echomimic_lib.config import TINY
    from echomimic_lib.models.unet import EchoUNet
    from echomimic_lib.tiny import randomize_

    den = randomize_(EchoUNet(TINY, "denoiser", motion=True), 77)
    torch.save({k: v for k, v in den.state_dict().items() if "motion_modules." in k}, path)  # mm_sd_v15_v2 key names
    return path


@pytest.mark.slow
def test_v1_stage1_stage2_export_animate(base, tmp_path):
    from trainer.config_file import load_config
    from trainer.evaluate import fixed_loss

    run1 = tmp_path / "stage1"
    cfg1 = write_yaml(tmp_path / "s1.yaml", v1_config(base, run1, steps=30, model={"gradient_checkpointing": True},
                                                      loss={"spatial": {"weight": 0.1, "lpips": 0.0, "face_crop": True,
                                                                        "crop_size": 32, "decoder_checkpointing": True}},
                                                      data={"roots": [str(headshot_dataset(base))]}, checkpoint={"every": 15}))
    train_cli("fit", "--config", cfg1)
    cfg = load_config(cfg1)
    before, after = fixed_loss(cfg, None, samples=4), fixed_loss(cfg, run1 / "checkpoints" / "step-00000030", samples=4)
    assert after < 0.8 * before, (before, after)  # overfits the two clips
    r = rows(run1)
    assert [x["step"] for x in r] == list(range(1, 31))  # completed steps, as the checkpoint names and the bar
    assert {"loss/latent", "loss/spatial", "loss/total", "lr", "grad_norm", "time/step_s", "mem/rss_peak_gb"} <= set(r[0])
    assert (run1 / "checkpoints" / "loss.png").stat().st_size > 1000
    assert list((run1 / "tensorboard").glob("events.out.tfevents.*"))
    assert [p.name for p in sorted((run1 / "checkpoints").glob("step-*"))] == ["step-00000015", "step-00000030"]

    exp1 = tmp_path / "export1"
    train_cli("export", run1, exp1)
    names = {p.name for p in exp1.iterdir()}
    for stem in ("reference_unet_pose", "denoising_unet_pose", "motion_module_pose", "face_locator_pose"):
        assert {stem + ".pth", stem + ".safetensors"} <= names
    assert {"sd-image-variations-diffusers", "inference_config.json", "sd-vae-ft-mse", "audio_processor"} <= names

    # stage 2: motion modules (AnimateDiff-format file) trained, everything else frozen
    run2 = tmp_path / "stage2"
    mm = _animatediff_file(tmp_path / "mm_sd_v15_v2.ckpt")
    cfg2 = v1_config(base, run2, steps=3, preset="v1_stage2", loss={"spatial": {"weight": 0.0}}, optim={"batch_size": 1},
                     model={"init": "echomimic", "echomimic_path": str(exp1), "motion_init": "animatediff", "motion_path": str(mm)},
                     phases=[{"name": "stage2", "steps": 3, "frames": 4}], validation={"every": 3, "steps": 2, "frames": 4},
                     ema={"enabled": True, "decay": 0.5})  # validation renders with the EMA weights, then restores
    train_cli("fit", "--config", write_yaml(tmp_path / "s2.yaml", cfg2))
    s1, s2 = load_ckpt(run1 / "checkpoints" / "step-00000030"), load_ckpt(run2 / "checkpoints" / "step-00000003")
    assert all(torch.equal(s1[k], s2[k]) for k in s1), "stage 2 changed a non-motion parameter"
    init_mm = torch.load(mm, weights_only=True)
    moved = [k for k in init_mm if not torch.equal(init_mm[k], s2["denoiser." + k])]
    assert moved and all("motion_modules." in k for k in moved)
    assert (run2 / "validation" / "step-00000003.mp4").stat().st_size > 0
    from trainer.monitor import read_log

    scored = [r for r in read_log(run2 / "train_log.jsonl") if r.get("event") == "validation_metrics"]
    assert [r["step"] for r in scored] == [3] and scored[0]["flicker"] >= 0  # the validation video is scored
    (val,) = events(run2, "validation")
    assert val["held_out"] and val["clip"] in {"driving_a", "driving_b"}  # a held-out clip (disjointness: test_trainer_conventions.py)

    exp2 = tmp_path / "export2"
    train_cli("export", run2, exp2, "--format", "safetensors")
    out = tmp_path / "anim.mp4"
    r = subprocess.run([sys.executable, "-m", "echomimic_lib.cli", "animate", "--models", str(exp2), "--version", "v1", "--mode",
                        "audio+landmarks", "--landmarks", str(DATA / "v1_pose_pkl"), "--reference", str(DATA / "images" / "portrait_a.png"),
                        "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(out), "--offline", "--mediapipe-model", str(MEDIAPIPE),
                        "--steps", "2", "--width", "64",
                        "--height", "64", "--length", "6", "-q"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from echomimic_lib.io.video_io import probe

    assert probe(out)["frames"] == 6


def test_init_from_sd_image_variations(base, tmp_path):
    """The paper's initialisation on a test-sized diffusers UNet2DConditionModel written here."""
    from diffusers import UNet2DConditionModel

    from echomimic_lib.config import TINY, unet_config_dict
    from echomimic_lib.tiny import randomize_
    from trainer.config_file import load_config
    from trainer.init import build

    cfg = unet_config_dict(TINY)
    cfg["cross_attention_dim"] = 48  # SD's text width (768) differs from whisper's 384
    unet = randomize_(UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}), 5)
    unet.save_pretrained(str(tmp_path / "sd-image-variations-diffusers" / "unet"))
    v1 = tiny_weights(base, "v1")
    mm = _animatediff_file(tmp_path / "mm.ckpt")
    c = load_config(None, ["model.init=sd", f"model.sd_path={tmp_path / 'sd-image-variations-diffusers'}", f"model.vae_path={v1 / 'sd-vae-ft-mse'}",
                           f"model.whisper_path={v1 / 'audio_processor' / 'whisper_tiny.pt'}", "model.motion_init=animatediff",
                           f"model.motion_path={mm}"], preset="v1_stage2")
    b = build(c)
    sd = unet.state_dict()
    ref, den = b.net.reference.state_dict(), b.net.denoiser.state_dict()
    assert all(torch.equal(ref[k], sd[k]) for k in ref)  # every reference key comes from SD
    fresh = b.report["denoiser_fresh"]
    assert len(fresh) == 32 and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in fresh)  # 384-d audio K/V stay new
    assert all(torch.equal(den[k], sd[k]) for k in den if k in sd and k not in fresh)
    assert b.report["sd_unused"] == []
    assert float(b.net.cond_encoder.conv_out.weight.detach().abs().sum()) == 0.0  # zero-initialised condition output
    mm_state = torch.load(mm, weights_only=True)
    assert all(torch.equal(den[k], v) for k, v in mm_state.items())


def _fit_process(cfg_path: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", "fit", "--config", str(cfg_path), *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(base, tmp_path):
    common = dict(seed=5, data={"num_workers": 2, "audio_aug": {"noise_prob": 0.3, "gain_prob": 0.3, "shift_prob": 0.3}},
                  optim={"lr": 1e-3, "batch_size": 2, "grad_accum": 2, "warmup_steps": 3}, ema={"enabled": True, "decay": 0.9},
                  checkpoint={"every": 3, "keep_last": 5}, model={"whisper_path": str(tiny_weights(base, "v1") / "audio_processor" / "whisper_tiny.pt")})
    a, b = tmp_path / "a", tmp_path / "b"
    ca = write_yaml(tmp_path / "a.yaml", v1_config(base, a, steps=9, **common))
    cb = write_yaml(tmp_path / "b.yaml", v1_config(base, b, steps=9, **common))
    pa = _fit_process(ca)
    pb = _fit_process(cb)
    deadline = time.time() + 500
    while time.time() < deadline:  # kill b once it has checkpointed step 3 and is in the middle of step 5
        if (b / "train_log.jsonl").is_file() and any(r.get("step") == 4 and "event" not in r for r in _safe_log(b)):
            break
        assert pb.poll() is None, pb.stderr.read()[-3000:]
        time.sleep(0.05)
    pb.send_signal(signal.SIGKILL)
    pb.wait()
    assert "step-00000003" in {p.name for p in (b / "checkpoints").glob("step-*")}
    train_cli("fit", "--config", cb, "--resume")
    assert pa.wait(timeout=600) == 0, pa.stderr.read()[-3000:]
    ka, kb = a / "checkpoints" / "step-00000009", b / "checkpoints" / "step-00000009"
    for name in ("model.safetensors", "optimizer.bin", "custom_checkpoint_2.pkl"):  # weights, AdamW state, EMA
        assert (ka / name).read_bytes() == (kb / name).read_bytes(), name
    assert json.loads((kb / "meta.json").read_text())["step"] == 9
    assert sorted(p.name for p in (b / "checkpoints").glob("step-*")) == ["step-00000003", "step-00000006", "step-00000009"]
    assert events(b, "start")[-1]["resumed_from"].endswith(("step-00000003", "step-00000006"))


def _safe_log(run):
    out = []
    for line in (run / "train_log.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _launch2(cfg: Path, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainer", "fit", "--config", str(cfg), *extra],
                          cwd=ROOT, env={**ENV, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_cross_a_phase_change_and_resume_exactly(base, tmp_path):
    """2 CPU processes (gloo): stage 1 (spatial) then stage 2 (motion modules only: a new DDP wrapper for the new
    trainable set, through accelerate's public API); the run stopped after the change and resumed from its
    checkpoint ends bitwise where the uninterrupted run ends."""
    import shutil

    def cfg(out):
        return write_yaml(tmp_path / f"{out.name}.yaml", v1_config(
            base, out, optim={"batch_size": 1}, model={"motion_init": "random"}, ema={"enabled": True, "decay": 0.5},
            phases=[{"name": "stage1", "steps": 2}, {"name": "stage2", "steps": 2, "kind": "temporal", "frames": 2, "train": ["motion"]}],
            checkpoint={"every": 3, "keep_last": 5}))

    run = tmp_path / "ddp"
    r = _launch2(cfg(run))
    assert r.returncode == 0, r.stderr[-4000:]
    assert events(run, "start")[0]["processes"] == 2
    assert [e["name"] for e in events(run, "phase")] == ["stage2"] and events(run, "phase")[0]["step"] == 3
    ck = events(run, "checkpoint")
    assert [e["step"] for e in ck] == [3, 4] and all(e["ranks_consistent"] and len(e["rank_checksums"]) == 2 for e in ck)
    final = run / "checkpoints" / "step-00000004"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in final.iterdir()}
    s3, s4 = (load_ckpt(run / "checkpoints" / f"step-0000000{i}") for i in (3, 4))
    moved = [k for k in s3 if not torch.equal(s3[k], s4[k])]
    assert moved and all("motion_modules." in k for k in moved)  # stage 2 trains the motion modules only
    # the run as if killed after step 3 (its folder holds exactly that checkpoint), resumed by a new 2-process launch
    cut = tmp_path / "cut"
    shutil.copytree(run / "checkpoints" / "step-00000003", cut / "checkpoints" / "step-00000003")
    r = _launch2(cfg(cut), "--resume")
    assert r.returncode == 0, r.stderr[-4000:]
    assert events(cut, "start")[0]["phase"] == "stage2" and events(cut, "start")[0]["resumed_from"].endswith("step-00000003")
    for name in ("model.safetensors", "optimizer.bin", "custom_checkpoint_2.pkl"):  # weights, AdamW state, EMA
        assert (final / name).read_bytes() == (cut / "checkpoints" / "step-00000004" / name).read_bytes(), name
    assert events(cut, "checkpoint")[-1]["rank_checksums"] == ck[-1]["rank_checksums"]
    assert all(torch.isfinite(v).all() for v in s3.values())


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change: this test trains in fp16 in the
    pytest process, after (and before) other in-process runs in fp32."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_nonfinite_losses_are_detected_reported_and_stop_the_run(base, tmp_path, fresh_accelerate_state):
    from trainer.config_file import load_config
    from trainer.loop import NonFiniteError, fit

    run = tmp_path / "nan"
    cfg = load_config(write_yaml(tmp_path / "nan.yaml", v1_config(base, run, steps=6, max_nonfinite=2, mixed_precision="fp16")))
    snap = {}

    def poison(step, out):
        if step >= 2:
            out.total = out.total * float("nan")
        return out

    def after(step, outs, net):
        snap[step] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        fit(cfg, hooks={"after_loss": poison, "after_step": after})
    ev = events(run, "nonfinite")
    assert [e["step"] for e in ev] == [3, 4] and "bf16" in ev[0]["advice"]  # the 3rd and 4th steps (1-based)  # the fp16 trap, reported (no loss scaler on CPU)
    assert all(torch.equal(snap[2][k], snap[3][k]) for k in snap[2])  # a skipped step does not touch the weights
