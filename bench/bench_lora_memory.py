"""Computed GPU memory (and FLOPs) of one LoRA training step at the official size: no GPU, no real weights.

The official-size networks (SD1.5 widths: reference UNet, denoiser -- with motion modules only for clip
cases, as ``trainer.init.build`` does --, condition encoder, SD VAE) are built on the meta device, get the
peft adapters of :func:`trainer.lora.inject`, and are then given fake CPU tensors (``FakeTensorMode``:
shape and dtype, no storage). One training step runs on them: VAE encode of frames and reference (no grad),
noise / timestep, the reference pass, the denoiser, the latent v-loss, backward, with the adapters' AdamW
state allocated. A dispatch mode (:class:`LiveBytes`) follows every tensor storage alive during the step
(weights, adapters, optimizer state, activations, gradients, temporaries) and reports the peak; a second
pass under ``FlopCounterMode`` counts the floating-point operations (recomputed checkpointed blocks
included). torch's ``MemTracker`` is not used: it hooks gradients of every parameter, frozen ones too.

What it emulates of a CUDA run: bf16 autocast with the frozen base in bf16 (:func:`trainer.lora.cast_base_`)
and the adapters in fp32; CUDA autocast runs LayerNorm / GroupNorm in fp32 (CPU autocast does not), so
those are forced to fp32 here; attention is SDPA's fused kernel (no score matrix). Fake tensors hold no
values: the step's only data-dependent read ("does every row keep its reference?") is answered True.
Not included: the CUDA context (~0.3-0.5 GiB outside PyTorch's allocator), allocator fragmentation
(typically 5-15 %), the whisper encoder (it runs in the CPU data workers).

    .venv/bin/python bench/bench_lora_memory.py                       # V1 512 px and V2 768 px, batch 1, 2, 4
    .venv/bin/python bench/bench_lora_memory.py --cases v1_512_clip12 --batch 1 --rank 32 --no-grad-ckpt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# case: (weights, resolution, frames, cond channels)
CASES = {"v1_512": ("v1_audio", 512, 1, 1), "v1_512_clip12": ("v1_audio", 512, 12, 1),
         "v2_768": ("v2", 768, 1, 3), "v2_768_clip12": ("v2", 768, 12, 3)}
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, norm_num_groups=32)
AUDIO_TOKENS = 50  # whisper rows per frame as the dataset delivers them (50 x 384)


def _fp32_norms_(module) -> None:
    """Run every GroupNorm / LayerNorm of ``module`` in fp32 (inputs and affine parameters cast up, output fp32),
    as CUDA autocast does (its fp32 op list); CPU autocast would keep them in bf16. Set on the instances, so
    checkpointed blocks recomputed in backward behave the same."""
    import torch.nn.functional as F
    from torch import nn

    def up(t):
        return None if t is None else t.float()

    for m in module.modules():
        if isinstance(m, nn.GroupNorm):
            m.forward = lambda x, m=m: F.group_norm(x.float(), m.num_groups, up(m.weight), up(m.bias), m.eps)
        elif isinstance(m, nn.LayerNorm):
            m.forward = lambda x, m=m: F.layer_norm(x.float(), m.normalized_shape, up(m.weight), up(m.bias), m.eps)


class LiveBytes:
    """Bytes of the distinct tensor storages alive, and their peak (a TorchDispatchMode over every op's outputs)."""

    def __new__(cls):
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.weak import WeakIdKeyDictionary

        class _Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.seen, self.current, self.peak = WeakIdKeyDictionary(), 0, 0

            def track(self, tensors) -> None:
                import torch

                for t in tensors:
                    if isinstance(t, torch.Tensor):
                        st = t.untyped_storage()
                        if st not in self.seen:
                            n = st.nbytes()
                            self.seen[st] = n
                            self.current += n
                            weakref.finalize(st, self._free, n)
                self.peak = max(self.peak, self.current)

            def _free(self, n: int) -> None:
                self.current -= n

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                if func is torch.ops.aten._local_scalar_dense.default:
                    # a fake tensor has no value: the step's only data-dependent reads are "every row keeps its
                    # reference" (bool(rows.all())), which is True in this step; anything else is refused
                    if args[0].dtype != torch.bool:
                        raise RuntimeError(f"data-dependent read of a {args[0].dtype} tensor in the benchmarked step")
                    return True
                out = func(*args, **(kwargs or {}))
                self.track(tree_flatten(out)[0])
                return out

        return _Mode()


def _fake_storage_(module) -> None:
    """Replace every meta parameter / buffer by a fake CPU tensor of the same shape and dtype (call in FakeTensorMode)."""
    import torch

    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="cpu"), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cpu")


def run_case(case: str, batch: int, rank: int, networks: list[str], gc: bool, dtype: str) -> dict:
    import torch
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode

    from echomimic_lib.config import SD15
    from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
    from echomimic_lib.pipeline import make_scheduler
    from trainer.config import PhaseConfig, TrainConfig
    from trainer.lora import cast_base_, inject
    from trainer.net import TrainingNet, bypass_motion, set_trainable
    from trainer.step import encode_latents

    import echomimic_lib.lora

    echomimic_lib.lora.fingerprint = lambda layers: {}  # fake tensors have no values to fingerprint
    weights, res, frames, cond_ch = CASES[case]
    temporal = frames > 1
    cfg = TrainConfig()
    cfg.model.weights, cfg.model.echomimic_path, cfg.model.init, cfg.model.motion_init = weights, "(official size)", "echomimic", "released"
    cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha, cfg.lora.networks = True, rank, float(rank), networks
    phase = PhaseConfig(name="lora", kind="temporal" if temporal else "spatial", frames=frames,
                        train=["reference", "denoiser", "motion"] if temporal else ["reference", "denoiser"])
    low = getattr(torch, dtype)
    sched = make_scheduler()
    b, f, h = batch, frames, res // 8
    t0 = time.time()
    with torch.device("meta"):  # built (and adapters injected) on the meta device, then given fake CPU storage
        net = TrainingNet(EchoUNet(SD15, "reference"), EchoUNet(SD15, "denoiser", motion=temporal),  # as trainer.init.build
                          ConditionEncoder(cond_ch, SD15.cond_out_channels, SD15.cond_block_channels))
        vae = AutoencoderKL(**SD_VAE).requires_grad_(False).eval().to(low)
        for m in (net.reference, net.denoiser):
            m.gradient_checkpointing = gc
        desc = inject(net, cfg)
        cast_base_(net, low)
        set_trainable(net, phase.train, phase.audio)
        bypass_motion(net.denoiser, not temporal)
    with FakeTensorMode(allow_non_fake_inputs=True):
        for mod in (net, vae):
            _fake_storage_(mod)
            _fp32_norms_(mod)
        trainable = [p for p in net.parameters() if p.requires_grad]
        n_train = sum(p.numel() for p in trainable)
        n_total = sum(p.numel() for p in net.parameters())
        pixels = torch.randn(b * f, 3, res, res)
        reference = torch.randn(b, 3, res, res)
        audio = torch.randn(b, f, AUDIO_TOKENS, 384)
        cond = torch.randn(b, cond_ch, f, res, res)
        t = torch.full((b,), 500, dtype=torch.long)
        from torch.utils.flop_counter import FlopCounterMode

        def step(live=None):
            opt_state = [torch.zeros_like(p, dtype=torch.float32) for p in trainable for _ in range(2)]  # AdamW exp_avg, exp_avg_sq
            with torch.autocast("cpu", dtype=low):
                lat = encode_latents(vae, pixels, None, sample=False).view(b, f, 4, h, h).transpose(1, 2)
                ref = encode_latents(vae, reference, None, sample=False)
                noise = torch.randn_like(lat)
                x_t, target = sched.add_noise(lat, noise, t), sched.get_velocity(lat, noise, t)
                # TrainingNet.forward with every reference / condition kept (its dropout branch is data-dependent)
                bank, _ = net.reference.forward_reference(ref, 0)
                kv = net.denoiser.prepare_reference(bank)
                feats = net.cond_encoder(cond)
                pred = net.denoiser(x_t, t, audio=audio, cond=feats, reference=kv, reference_mask=torch.ones(b, dtype=torch.bool))
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            after = live.current if live is not None else 0
            loss.backward()
            del opt_state
            for p in trainable:
                p.grad = None
            return after

        live = LiveBytes()
        with live:
            live.track(list(net.parameters()) + list(net.buffers()) + list(vae.parameters()) + list(vae.buffers()))
            weights_b = live.current
            after_fw = step(live)
        flops = FlopCounterMode(display=False)  # a second pass: the counter's module tracking keeps tensors alive longer
        with flops, LiveBytes():  # (LiveBytes also answers the step's data-dependent reads)
            step()
    gb = lambda x: round(x / 1024**3, 2)  # noqa: E731
    return {"case": case, "weights": weights, "res": res, "frames": f, "batch": b, "rank": rank, "networks": networks,
            "grad_ckpt": gc, "base_dtype": dtype, "adapter_params_M": round(n_train / 1e6, 2), "total_params_M": round(n_total / 1e6, 1),
            "lora_layers": desc["layers"], "peak_gib": gb(live.peak), "weights_gib": gb(weights_b), "adam_state_gib": gb(8 * n_train),
            "after_forward_gib": gb(after_fw), "step_tflop": round(flops.get_total_flops() / 1e12, 2),
            "seconds": round(time.time() - t0, 1)}

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="v1_512,v2_768", help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--batch", default="1,2,4", help="comma-separated batch sizes")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--networks", default="denoiser", help="comma-separated: denoiser,reference,motion")
    p.add_argument("--no-grad-ckpt", action="store_true")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for case in a.cases.split(","):
        for b in (int(x) for x in a.batch.split(",")):
            r = run_case(case, b, a.rank, a.networks.split(","), not a.no_grad_ckpt, a.dtype)
            rows.append(r)
            print(json.dumps(r) if a.json else
                  f"{r['case']:<14} batch {r['batch']}  frames {r['frames']:>2}  rank {r['rank']}  grad-ckpt {r['grad_ckpt']}  "
                  f"adapters {r['adapter_params_M']} M  peak {r['peak_gib']} GiB (weights {r['weights_gib']}, after forward "
                  f"{r['after_forward_gib']}), {r['step_tflop']} TFLOP per step  ({r['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
