"""V2 (APDH, HPA, PhD) as configurations of the same trainer: masks from the shared poses, headshot padding,
half-body preparation, V2 samples, the shortened preset schedule end to end (phase order, pose-dropout ramp,
masks, muted audio, PhD phases, headshot data), resume in the middle of phase 3b, export -> animate --version v2."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from trainer.masks import (DEFAULT_HEAD_BOX, head_mask, headshot_layout, keypoints_from_pose, lips_mask, pad_headshot,
                           resize_to_tokens, token_grid, visualise_masks)
from tests.test_trainer_helpers import (DATA, ENV, ROOT, events, halfbody_dataset, headshot_dataset, load_ckpt, rows, shared_dir,
                                        tiny_weights, train_cli, write_yaml)

PHASES = ["1", "2", "3a", "3b", "3c", "3d", "4"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


@pytest.mark.parametrize("name", ["01", "fight"])
def test_masks_from_the_shared_poses(name):
    from echomimic_lib.pose import load_pose

    seq = load_pose(DATA / "pose" / name)
    size = (256, 256)
    for i in range(0, len(seq), 25):
        kp = keypoints_from_pose(seq, i, size)
        lips, head = lips_mask(kp, size), head_mask(kp, size)
        la, ha = lips.mean(), head.mean()
        assert 0.0005 < la < 0.02 and 0.01 < ha < 0.2, (i, la, ha)
        assert float((lips * (1 - head)).sum()) == 0.0  # the lips lie inside the head
        ys, xs = np.nonzero(head)
        face = kp.face[np.isfinite(kp.face).all(-1)]
        assert ys.min() < face[:, 1].min()  # the head mask reaches above the brows (forehead / hair cap)
        lips_c = np.argwhere(lips).mean(0)
        assert abs(lips_c[1] - kp.face[48:68, 0].mean()) < 4 and abs(lips_c[0] - kp.face[48:68, 1].mean()) < 4
    m = torch.from_numpy(lips)[None]
    for grid in [(32, 32), (16, 16), (8, 8), (4, 4)]:
        t = resize_to_tokens(m, grid)
        assert t.shape == (1, grid[0] * grid[1], 1) and 0 < int(t.sum()) <= int(m.sum())  # lips reach every resolution
    assert token_grid(12 * 10, (24, 20)) == (12, 10) and token_grid(3 * 3, (9, 9)) == (3, 3)  # odd sizes round up
    assert visualise_masks(np.zeros((256, 256, 3), np.uint8), {"lips": lips, "head": head}, (32, 32)).shape == (512, 256 * 5, 3)


def test_headshot_padding_geometry():
    face = np.zeros((68, 2))
    face[:, 0] = np.linspace(0.3, 0.7, 68)
    face[:, 1] = np.linspace(0.35, 0.85, 68)  # face box 0.3..0.7 x 0.35..0.85 of the headshot
    lay = headshot_layout(face, 512)
    cx, cy, hh = DEFAULT_HEAD_BOX
    box = lay.to_canvas(np.array([[0.3, 0.35], [0.7, 0.85]]))
    assert np.allclose(box.mean(0), [cx * 512, cy * 512]) and np.isclose(box[1, 1] - box[0, 1], hh * 512)
    img = np.full((128, 128, 3), 200, np.uint8)
    canvas, valid = pad_headshot(img, lay)
    x0, y0, x1, y1 = lay.valid_rect()
    assert canvas.shape == (512, 512, 3) and valid.shape == (512, 512)
    assert valid[y0:y1, x0:x1].all() and valid.sum() == (y1 - y0) * (x1 - x0) and valid.mean() < 0.5
    assert (canvas[valid == 0] == 0).all() and (canvas[valid == 1] == 200).all()
    assert y0 == 0 or lay.offset[1] >= 0  # the headshot's top is cut at the canvas border when it sticks out


def test_halfbody_prepare_and_v2_samples(base):
    from trainer.config_file import load_config
    from trainer.data.dataset import EchoDataset, ResumableSampler, build_pools
    from trainer.data.store import ClipReader, read_manifest

    hb = halfbody_dataset(base)
    (e,) = read_manifest(hb)
    assert e.kind == "halfbody" and e.num_frames == 48
    clip = ClipReader(e.path)
    seq = clip.pose()
    assert len(seq) == 48 and seq.canvas_size == (128, 128) and clip.frame(0).shape == (128, 128, 3)
    assert clip.array("landmarks").shape == (48, 478, 3)
    over = ["model.init=random", "model.arch=tiny", "model.motion_init=random", f"data.roots=[{hb}]", f"data.headshot_roots=[{headshot_dataset(base)}]",
            "data.width=64", "data.height=64", "data.audio_aug.noise_prob=0", "data.audio_aug.gain_prob=0", "data.audio_aug.shift_prob=0",
            "data.drop_condition=0"] + [f"phases.{p}.steps=1" for p in PHASES]
    cfg = load_config(None, over, preset="v2_apdh")
    pools = build_pools(cfg)
    ds, s = EchoDataset(cfg, pools), ResumableSampler(cfg, pools)
    per = cfg.optim.batch_size
    by_phase = {p: ds[s.key(i * per)] for i, p in enumerate(PHASES)}
    assert by_phase["1"]["audio_mask"].sum() == 0  # muted
    assert 0 < by_phase["3a"]["audio_mask"].mean() < by_phase["3c"]["audio_mask"].mean() < 1  # lips < head
    assert by_phase["3d"]["audio_mask"].min() == 1  # global
    ink = {p: float(by_phase[p]["cond"].sum()) for p in ("1", "3a", "3c", "3d")}
    assert ink["1"] > ink["3a"] > ink["3c"] > ink["3d"] > 0  # lips, then head, then body removed; hands kept
    hs = by_phase["3b"]
    assert bool(hs["headshot_padded"]) and 0 < float(hs["loss_mask"].mean()) < 1  # padded headshot with its padding mask
    assert float((hs["audio_mask"] * (1 - hs["loss_mask"])).sum()) == 0 and hs["audio_mask"].sum() > 0  # HPA head mask inside
    assert float(hs["pixels"][0][:, hs["loss_mask"][0] == 0].max()) == -1.0  # padding is black
    assert hs["keypoints"].shape[-2:] == (18 + 68 + 42, 2)


def _v2_cfg(base, out, phases: dict, **extra) -> dict:
    cfg = {
        "preset": "v2_apdh", "output_dir": str(out), "seed": 11, "cpu_threads": 1,
        "mixed_precision": "no",  # the preset's bf16 (#26) resumes exactly too (test_trainer_resume_bf16.py) but is ~20 % slower on CPU
        "model": {"init": "echomimic", "echomimic_path": str(tiny_weights(base, "v2")), "weights": "v2", "motion_init": "released"},
        "data": {"roots": [str(halfbody_dataset(base))], "headshot_roots": [str(headshot_dataset(base))], "width": 64, "height": 64,
                 "num_workers": 0, "audio_aug": {"noise_prob": 0.0, "gain_prob": 0.0, "shift_prob": 0.0}},
        "loss": {"phd": {"low_weight": 0.0}},
        "optim": {"lr": 1e-4, "batch_size": 2},
        "phases": [{"name": n, "steps": phases[n], **({"frames": 4} if n == "4" else {})} for n in PHASES],
        "checkpoint": {"every": 5, "keep_last": 10},
        "log": {"every": 1, "progress": False},
        "ema": {"enabled": True, "decay": 0.5},
    }
    cfg.update(extra)
    return cfg


STEPS = {"1": 2, "2": 3, "3a": 2, "3b": 4, "3c": 1, "3d": 1, "4": 1}  # 14 steps; step-10 lies inside 3b


@pytest.mark.slow
def test_apdh_schedule_end_to_end_resume_in_3b_and_export(base, tmp_path):
    from echomimic_lib.io.weights import read_state_dict
    from trainer.losses import phd_phase

    run = tmp_path / "apdh"
    train_cli("fit", "--config", write_yaml(tmp_path / "v2.yaml", _v2_cfg(base, run, STEPS)))
    r = rows(run)
    assert [x["step"] for x in r] == list(range(1, 15))
    expect = [n for n in PHASES for _ in range(STEPS[n])]
    assert [x["phase"] for x in r] == expect  # every phase, in order
    assert [e["name"] for e in events(run, "phase")] == PHASES[1:]
    assert [e["step"] for e in events(run, "phase")] == [3, 6, 8, 12, 13, 14]  # each phase's first step (1-based)
    assert [x["audio_mask"] for x in r] == [{"1": "muted", "2": "muted", "3a": "lips", "3b": "head", "3c": "head", "3d": "global",
                                            "4": "global"}[p] for p in expect]
    assert [x["apdh/pose_dropout_p"] for x in r if x["phase"] == "2"] == pytest.approx([0.0, 0.1, 0.2])  # the ramp
    parts = {x["phase"]: x["pose_parts"] for x in r}
    assert [parts[p] for p in ("1", "3a", "3b", "3d")] == ["body+head+lips+hands", "body+head+hands", "body+hands", "hands"]
    assert all(all(x["headshot"]) for x in r if x["phase"] == "3b") and not any(any(x["headshot"]) for x in r if x["phase"] != "3b")
    for x in r:  # the PhD term is chosen from each sample's timestep
        want = ["S1", "S2", "S3"]
        assert x["phd_phase"] == [want[int(i)] for i in phd_phase(torch.tensor(x["t"]))], x
        if "S1" not in x["phd_phase"]:
            assert x["loss/phd_S1_pose"] == 0.0
        if "S2" in x["phd_phase"]:
            assert x["loss/phd_S2_detail"] > 0.0
        if "S1" in x["phd_phase"]:
            assert x["loss/phd_S1_pose"] > 0.0  # the pose encoder's features of x0 and of the target differ
    # muted audio in phases 1-2: output zero (logged peak of every audio attention), weights frozen
    assert all((x["apdh/audio_attn_out_absmax"] == 0.0) == (x["phase"] in ("1", "2")) for x in r)
    init = read_state_dict(tiny_weights(base, "v2") / "denoising_unet.pth")
    after2 = load_ckpt(run / "checkpoints" / "step-00000005")
    audio = [k for k in init if ".attn2." in k or (".norm2." in k and "transformer_blocks" in k)]
    assert audio and all(torch.equal(init[k].float(), after2["denoiser." + k]) for k in audio)
    assert not torch.equal(init["conv_in.weight"].float(), after2["denoiser.conv_in.weight"])
    final = load_ckpt(run / "checkpoints" / "step-00000014")
    assert any(not torch.equal(after2["denoiser." + k], final["denoiser." + k]) for k in audio)  # trained from 3a on
    # the EMA built over phases 1-3d survives phase 4 (motion only): frozen parameters keep their average
    from trainer.export import load_checkpoint_weights

    ema = load_checkpoint_weights(run / "checkpoints" / "step-00000014", ema=True)
    assert not torch.equal(ema["denoiser.conv_in.weight"], final["denoiser.conv_in.weight"])
    assert not torch.equal(ema["reference.conv_in.weight"], final["reference.conv_in.weight"])

    # resume in the middle of 3b (checkpoint after 10 steps; 3b = steps 7..10) continues in 3b, exactly
    run2 = tmp_path / "resumed"
    train_cli("fit", "--config", write_yaml(tmp_path / "v2b.yaml", _v2_cfg(base, run2, STEPS)), "--resume", run / "checkpoints" / "step-00000010")
    start = events(run2, "start")[0]
    assert start["phase"] == "3b" and start["resumed_from"].endswith("step-00000010")
    r2 = rows(run2)
    assert r2[0]["step"] == 11 and r2[0]["phase"] == "3b" and all(r2[0]["headshot"])
    for name in ("model.safetensors", "optimizer.bin"):  # AdamW state too: phase 4's motion modules first train after the resume
        assert (run2 / "checkpoints" / "step-00000014" / name).read_bytes() == (run / "checkpoints" / "step-00000014" / name).read_bytes(), name

    exp = tmp_path / "export"
    train_cli("export", run, exp, "--dtype", "float16")
    assert {"reference_unet.pth", "denoising_unet.safetensors", "motion_module.pth", "pose_encoder.safetensors"} <= {p.name for p in exp.iterdir()}
    out = tmp_path / "v2.mp4"
    res = subprocess.run([sys.executable, "-m", "echomimic_lib.cli", "animate", "--models", str(exp), "--version", "v2", "--pose",
                          str(DATA / "pose" / "01"), "--reference", str(DATA / "images" / "halfbody_0035.png"), "--audio",
                          str(DATA / "audio" / "echomimicv2_woman.wav"), "-o", str(out), "--offline", "--steps", "2", "--width", "64",
                          "--height", "64", "--length", "4", "-q"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    from echomimic_lib.io.video_io import probe

    assert probe(out)["frames"] == 4
