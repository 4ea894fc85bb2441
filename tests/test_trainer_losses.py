"""Loss pieces and network controls: w(t), PhD phases, the edge operator, keypoint maps, x0 from v,
gradient checkpointing, motion bypass, the audio-attention hooks, unused reference parameters."""
from __future__ import annotations

import math

import pytest
import torch

from echomimic_lib.config import TINY
from echomimic_lib.models.unet import EchoUNet
from echomimic_lib.pipeline import make_scheduler
from echomimic_lib.tiny import randomize_
from trainer.losses import keypoint_heatmaps, masked_mse, phd_phase, pose_maps, soft_edges, spatial_weight, x0_from_v
from trainer.net import AudioAttentionControl, bypass_motion, enable_gradient_checkpointing, unused_reference_parameters


def test_spatial_weight_at_0_half_and_T():
    T = 1000
    assert float(spatial_weight(0, T)) == 1.0
    assert float(spatial_weight(T / 2, T)) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert abs(float(spatial_weight(T, T))) < 1e-12
    w = spatial_weight(torch.arange(0, 1001, 50), T)
    assert bool((w[1:] <= w[:-1]).all())


def test_phd_phase_boundaries():
    t = torch.tensor([999, 900, 899, 500, 300, 299, 0])
    assert phd_phase(t, 1000, (0.1, 0.6)).tolist() == [0, 0, 1, 1, 1, 2, 2]
    # configurable boundaries, e.g. the community port's t >= 700 / 100..700 / < 100
    assert phd_phase(torch.tensor([700, 699, 100, 99]), 1000, (0.3, 0.6)).tolist() == [0, 1, 1, 2]


def test_x0_from_v_recovers_the_clean_latent():
    s = make_scheduler()
    x0 = torch.randn(3, 4, 1, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 500, 999])
    xt, v = s.add_noise(x0, noise, t), s.get_velocity(x0, noise, t)
    assert torch.allclose(x0_from_v(xt, v, s.alphas_cumprod, t), x0, atol=1e-5)
    assert float(s.alphas_cumprod[999]) == 0.0  # zero terminal SNR: x_T is pure noise


def test_edge_operator_gradient_is_nonzero_and_finite():
    img = torch.full((2, 3, 32, 32), -0.8)
    img[:, :, 8:24, 8:24] = 0.8  # a bright square: edges on its border
    img[1] += 0.05 * torch.randn(3, 32, 32)
    img.requires_grad_(True)
    e = soft_edges(img)
    d = e.detach()
    assert d.shape == (2, 1, 32, 32) and float(d.min()) >= 0 and float(d.max()) <= 1
    assert float(d[0, 0, 8, 16]) > 0.5 > float(d[0, 0, 16, 16])  # border vs flat inside
    e.sum().backward()
    g = img.grad
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    flat = torch.zeros(1, 3, 16, 16, requires_grad=True)  # flat image: the magnitude's sqrt must not blow up
    soft_edges(flat).sum().backward()
    assert bool(torch.isfinite(flat.grad).all())


def test_keypoint_maps_weight_the_image_at_the_keypoints():
    pts = torch.tensor([[[10.0, 20.0], [float("nan"), float("nan")]]])
    heat = keypoint_heatmaps(pts, (32, 32), 2.0)
    assert float(heat[0, 0, 20, 10]) == pytest.approx(1.0) and float(heat[0, 0, 0, 31]) < 1e-6
    img = torch.ones(1, 3, 32, 32)
    assert torch.allclose(pose_maps(img, pts, 2.0 / 32), heat.expand(1, 3, 32, 32))
    est = pose_maps(img, pts, 0.1, estimator=lambda x: x.mean(1, keepdim=True))  # the differentiable-estimator hook
    assert est.shape == (1, 1, 32, 32)


def test_masked_mse_ignores_padding():
    a, b = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    b[..., :2] = 0
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2] = 1
    assert float(masked_mse(a, b, m)) == 0.0 and float(masked_mse(a, b)) == 0.5


def _inputs(b=2, f=1, hw=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, 4, f, hw, hw, generator=g), torch.tensor([10, 700])[:b], torch.randn(b, f, 50, 384, generator=g),
            torch.randn(b, 4, hw, hw, generator=g))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    ref, den = randomize_(EchoUNet(TINY, "reference"), 1), randomize_(EchoUNet(TINY, "denoiser", motion=True), 2)
    x, t, audio, refl = _inputs(f=3)

    def grads(on):
        for m in (ref, den):
            enable_gradient_checkpointing(m, on)
            m.zero_grad(set_to_none=True)
        bank, _ = ref.forward_reference(refl, 0)
        den(x, t, audio=audio, reference=den.prepare_reference(bank)).square().mean().backward()
        return [p.grad.clone() for p in list(ref.parameters()) + list(den.parameters()) if p.grad is not None]

    a, b = grads(False), grads(True)
    assert len(a) == len(b) and all(torch.allclose(u, v, atol=1e-5, rtol=1e-4) for u, v in zip(a, b))


def test_motion_bypass_equals_the_single_frame_model():
    den = randomize_(EchoUNet(TINY, "denoiser", motion=True), 3)
    plain = EchoUNet(TINY, "denoiser", motion=False)
    plain.load_state_dict({k: v for k, v in den.state_dict().items() if "motion_modules." not in k})
    x, t, audio, _ = _inputs(f=2)
    with torch.no_grad():
        bypass_motion(den, True)
        a = den(x, t, audio=audio)
        bypass_motion(den, False)
        c = den(x, t, audio=audio)
        b = plain(x, t, audio=audio)
    assert torch.equal(a, b) and not torch.allclose(c, b)


def test_audio_attention_control_mutes_and_masks_per_resolution():
    den = randomize_(EchoUNet(TINY, "denoiser", motion=False), 4)
    x, t, audio, _ = _inputs()
    ctrl = AudioAttentionControl(den)
    ctrl.record = {}
    with torch.no_grad():
        ctrl.set(torch.zeros(2, 64, 64), (8, 8))
        muted = den(x, t, audio=audio)
        assert ctrl.record and all(float(v.abs().max()) == 0.0 for v in ctrl.record.values())
        m = torch.zeros(2, 64, 64)
        m[:, :32, :32] = 1  # top-left quadrant
        ctrl.set(m, (8, 8))
        den(x, t, audio=audio)
        for path, out in ctrl.record.items():
            n = int(out.shape[1] ** 0.5)
            grid = out[0].view(n, n, -1).abs().amax(-1)
            assert float(grid[(n + 1) // 2 :, :].max() if n > 1 else 0.0) == 0.0, path  # rows below the mask: zero
            assert float(grid[: max(1, n // 2), : max(1, n // 2)].min()) > 0.0, path
        ctrl.set(None)
        free = den(x, t, audio=audio)
    ctrl.remove()
    assert not torch.allclose(muted, free)


def test_unused_reference_parameters_get_no_gradient():
    ref = randomize_(EchoUNet(TINY, "reference"), 5)
    bank, _ = ref.forward_reference(torch.randn(1, 4, 8, 8), 0)
    sum(v.sum() for v in bank.values()).backward()
    no_grad = {n for n, p in ref.named_parameters() if p.grad is None}
    assert no_grad == set(unused_reference_parameters(ref))
