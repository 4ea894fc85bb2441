"""Where the trainer follows the papers more closely (issue 15, section 1): the EMA across phases, PhD's pose
term on the pose encoder's features, fully pose-driven clips, validation in the phase's conditions."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from tests.test_trainer_helpers import (DATA, FakeDWPose, halfbody_dataset, halfbody_video, shared_dir, tiny_weights, whisper_path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def test_ema_keeps_the_average_of_parameters_a_phase_freezes():
    from trainer.ema import PhaseEMA

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    ema = PhaseEMA([a, b], decay=0.5, min_decay=0.5, update_after_step=0, use_ema_warmup=False)
    for _ in range(3):  # phase 1 trains a only
        b.requires_grad_(False)
        with torch.no_grad():
            a.add_(1.0)
        ema.step([a, b])
    avg_a = ema.shadow_params[0].clone()
    assert 0 < float(avg_a[0]) < float(a.detach()[0])  # an average that lags the live value
    a.requires_grad_(False)
    b.requires_grad_(True)
    for _ in range(2):  # phase 2 trains b only; a is frozen (diffusers would copy its live value into the shadow)
        with torch.no_grad():
            b.add_(1.0)
        ema.step([a, b])
    assert torch.equal(ema.shadow_params[0], avg_a)  # a's average survives the phase that freezes it
    assert 0 < float(ema.shadow_params[1][0]) < float(b.detach()[0])
    state = ema.state_dict()
    again = PhaseEMA([a, b], decay=0.5)
    again.load_state_dict(state)
    assert torch.equal(again.shadow_params[0], avg_a)  # and checkpoints like diffusers' EMAModel


def _hand_picture(seq, i, size, shift=0):
    from echomimic_lib.pose import draw_hands

    img = draw_hands(seq, i, size)
    img = np.roll(img, shift, axis=1)
    return torch.from_numpy(img).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]


def test_phd_pose_term_on_encoder_features_sees_a_displaced_hand():
    from echomimic_lib.models.unet import ConditionEncoder
    from echomimic_lib.pose import load_pose
    from trainer.config import PhDConfig
    from trainer.masks import keypoints_from_pose
    from trainer.phd import pose_term

    seq = load_pose(DATA / "pose" / "01")
    size = (128, 128)
    target = _hand_picture(seq, 0, size)
    kp = torch.from_numpy(keypoints_from_pose(seq, 0, size).all_points()).float()[None]
    pred = _hand_picture(seq, 0, size, shift=32).requires_grad_(True)  # the hand drawn 32 px (17 sigma) to the right
    ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    pts = kp[0][torch.isfinite(kp[0]).all(-1)]
    far = ((xs[..., None] - pts[:, 0]) ** 2 + (ys[..., None] - pts[:, 1]) ** 2).amin(-1) > (4 * 0.015 * 128) ** 2
    moved = ((pred.detach() - target).abs().amax(1) > 0.1)[0] & (target.amax(1)[0] <= -0.9) & far  # where the hand went
    assert int(moved.sum()) > 20
    torch.manual_seed(0)
    enc = ConditionEncoder(3)  # a fresh pose encoder, output convolution zero as at the start of an SD-initialised run
    torch.nn.init.zeros_(enc.conv_out.weight)
    torch.nn.init.zeros_(enc.conv_out.bias)
    grads = {}
    for form in ("heatmap", "encoder"):
        cfg = PhDConfig(pose_form=form)
        assert float(pose_term(target, target, kp, cfg, enc)) == 0.0
        loss = pose_term(pred, target, kp, cfg, enc)
        assert float(loss.detach()) > 0
        (g,) = torch.autograd.grad(loss.sum(), pred)
        grads[form] = float(g.abs().sum(1)[0][moved].sum())
    assert grads["heatmap"] < 1e-6 * grads["encoder"] and grads["encoder"] > 0  # only the encoder form pulls the hand back
    pose_term(pred, target, kp, PhDConfig(pose_form="encoder"), enc).sum().backward()
    assert all(p.grad is None for p in enc.parameters())  # the term trains the denoiser, not the encoder it reads


def test_pose_driven_clips_prepare_without_speech_and_train_audio_dropped(base, tmp_path):
    import shutil

    from trainer.config_file import load_config
    from trainer.data.clean import PrepareConfig
    from trainer.data.dataset import EchoDataset, ResumableSampler, build_pools
    from trainer.data.prepare import prepare_dataset
    from trainer.data.store import ClipReader, read_manifest

    video = halfbody_video(tmp_path / "src", frames=24)
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(video, inp / "dance.mp4")  # no audio stream, no sidecar: a pose clip needs none
    s = prepare_dataset(inp, tmp_path / "ds", PrepareConfig(kind="pose", size=128, num_shards=2), whisper_path(base),
                        pose_detector=FakeDWPose(), progress=False)
    (e,) = read_manifest(tmp_path / "ds")
    assert s["kept"] == 1 and e.kind == "pose" and e.num_frames == 24
    clip = ClipReader(e.path)
    assert len(clip.pose()) == 24 and not clip.has("landmarks") and not np.asarray(clip.array("audio16k")).any()
    over = ["model.init=random", "model.arch=tiny", "model.motion_init=random", f"data.roots=[{halfbody_dataset(base)}, {tmp_path / 'ds'}]",
            "data.width=64", "data.height=64", "data.drop_all=0", "data.drop_audio=0", "data.drop_condition=0"]
    over += [f"phases.{p}.steps=2" for p in ("1", "2", "3a", "3b", "3c", "3d", "4")] + ["phases.3b.data=halfbody"]
    cfg = load_config(None, over, preset="v2_apdh")
    pools = build_pools(cfg)
    ds, sampler = EchoDataset(cfg, pools), ResumableSampler(cfg, pools)
    kinds = {}
    for i in range(8):  # phase 1 draws from half-body and pose clips
        key = sampler.key(i)
        x = ds[key]
        kinds.setdefault(pools.entries[key["clip"]].kind, []).append(x)
    assert set(kinds) == {"halfbody", "pose"}
    assert all(bool(x["drop_audio"]) for x in kinds["pose"]) and not any(bool(x["drop_audio"]) for x in kinds["halfbody"])
    assert all(float(x["cond"].sum()) > 0 for x in kinds["pose"])  # body, head, lips and hands drawn from DWPose
    late = {pools.entries[sampler.key(i)["clip"]].kind for i in range(4 * cfg.optim.batch_size, 5 * cfg.optim.batch_size)}
    assert late == {"halfbody"}  # phase 3a: half-body only


def test_validation_renders_with_the_phases_conditions_and_audio_mask(base, tmp_path):
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools
    from trainer.init import build
    from trainer.monitor import Monitor
    from trainer.net import AudioAttentionControl
    from trainer.validation import render_validation

    over = ["model.init=echomimic", f"model.echomimic_path={tiny_weights(base, 'v2')}", "model.motion_init=released",
            f"data.roots=[{halfbody_dataset(base)}]", "data.width=64", "data.height=64", "validation.steps=1", "validation.frames=4"]
    cfg = load_config(None, over, preset="v2_apdh")
    built = build(cfg)
    pools = build_pools(cfg)
    ctrl = AudioAttentionControl(built.net.denoiser)
    seen = []
    built.net.cond_encoder.register_forward_hook(lambda m, args, out: seen.append(float(args[0].sum())))
    out = {}
    for name in ("1", "3d"):
        phase = next(p for p in cfg.phases if p.name == name)
        ctrl.reset_stats()
        seen.clear()
        dest = render_validation(cfg, built.net, built.vae, built, pools, 5, tmp_path / name, Monitor(tmp_path, False), "cpu",
                                 phase=phase, audio_control=ctrl)
        out[name] = (ctrl.reset_stats(), max(seen))
        assert dest.is_file() and ctrl.mask is None  # the mask is lifted after rendering
    assert out["1"][0] == 0.0 and out["3d"][0] > 0  # phase 1 renders with the audio attention muted, as it trains
    assert out["1"][1] > out["3d"][1] > 0  # phase 1's pictures: body, head, lips and hands; 3d: hands only
    ctrl.remove()
