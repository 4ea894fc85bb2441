"""The EchoMimic sampler: one loop for V1 audio, V1 landmarks, V1 audio + selected landmarks, V2
half-body and the few-step ``acc`` weights. The modes differ only in data: condition, weights,
steps/cfg, window shift and noise clamp (see :mod:`echomimic_lib.modes`).

Exact savings over the reference loop (identical outputs):
- unconditional rows use plain self-attention (no reference tokens computed and thrown away);
- reference keys/values are projected once per generation;
- zero-audio attention is replaced by its constant (the output bias);
- several context windows can share one UNet call (``windows_per_batch``);
- ``cuda_graphs``: the denoiser call is recorded once per generation and replayed
  (:mod:`echomimic_lib.models.unet.graphs`; a GPU option, same result up to float rounding);
- the VAE decodes frames in batches; the condition encoder runs per window, so memory does not
  grow with video length;
- the denoising loop never reads from the device (windows are gathered and scattered by slices, the
  audio chunks are moved once), and self-attention projects q, k, v with one GEMM (``fuse_projections``).

Opt-in and *not* exact: ``deep_cache`` (DeepCache, :mod:`.deep_cache`) runs the whole denoiser only every few
steps and its shallow layers in between.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import EchoMimicError
from ..models.unet.compile import is_compiled
from ..models.unet.graphs import CudaGraphRunner
from .conditions import FrameCondition, MaskCondition
from .context import base_windows, shift_windows, take_runs, window_runs
from .decode import VAE_SCALE, decode_latents
from .deep_cache import DeepCache, check_branch
from .resume import check_resumable
from .scheduler import make_scheduler
from .settings import SampleSettings

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    frames: torch.Tensor | None  # (F, H, W, 3) float32 in [0, 1] on CPU (None when a frame sink was given)
    latents: torch.Tensor  # (1, 4, F, h, w) final latents
    fps: float
    num_frames: int
    unet_calls: int


def initial_noise(seed: int, num_frames: int, height: int, width: int, clamp: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn((1, 4, num_frames, height // 8, width // 8), generator=gen, dtype=torch.float32)
    return noise.clamp(-1.5, 1.5) if clamp else noise


def _image_tensor(image, height: int, width: int) -> torch.Tensor:
    """Reference image (H, W, 3) uint8 / float [0,1] (numpy or torch) -> (1, 3, H, W) in [-1, 1] at W x H."""
    t = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image.detach().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.dim() != 3 or t.shape[-1] not in (3, 4):
        raise EchoMimicError(f"the reference image must be (H, W, 3), got {tuple(t.shape)}.")
    t = (t.float() / 255.0 if t.dtype == torch.uint8 else t.float())[..., :3]
    t = t.permute(2, 0, 1).unsqueeze(0)
    if t.shape[-2:] != (height, width):
        t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return (t.clamp(0, 1) * 2.0 - 1.0)


class Sampler:
    """Runs one generation. Construct with loaded models (:class:`~echomimic_lib.model_set.EchoMimicModels`)."""

    def __init__(self, models, placement=None):
        self.models = models
        self.placement = placement  # echomimic_lib.memory.Placement: which network is on the device per stage

    @property
    def device(self):
        return self.placement.device if self.placement is not None else self.models.device

    @property
    def dtype(self):
        return self.models.dtype

    def _stage(self, name: str) -> None:
        if self.placement is not None:
            self.placement.enter(name)

    # -------------------------------------------------------------- stages
    @torch.no_grad()
    def encode_reference(self, image, height: int, width: int) -> torch.Tensor:
        self._stage("vae_encode")
        vae = self.models.vae
        x = _image_tensor(image, height, width).to(self.device, vae.dtype)
        return vae.encode(x).latent_dist.mean * VAE_SCALE

    @torch.no_grad()
    def reference_kv(self, ref_latents: torch.Tensor):
        """The reference bank (reference UNet, once) projected to the denoiser's keys/values; leaves the
        placement in the denoising stage."""
        self._stage("reference")
        bank, _ = self.models.reference.forward_reference(ref_latents.to(self.device), 0)
        del _
        self._stage("reference_kv")
        kv = self.models.denoiser.prepare_reference(bank)
        del bank
        self._stage("denoise")
        return kv

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 8, sink: Callable | None = None,
               check: Callable[[], None] | None = None) -> torch.Tensor | None:
        """Latents (1, 4, F, h, w) -> frames (F, H, W, 3) in [0, 1] on CPU, at most ``batch`` frames per VAE
        call (fewer when memory is short, and on the CPU as many as fit in its working set; see
        :mod:`.decode`). With ``sink(start, frames)`` the frames are handed over chunk by chunk instead of
        collected. ``check`` (Cancel) runs between the VAE decoder's blocks (:func:`.decode.decode_latents`)."""
        self._stage("decode")
        budget = self.placement.decode_budget() if self.placement is not None else None
        return decode_latents(self.models.vae, latents, self.device, max_batch=batch, budget=budget, sink=sink,
                              check=check)

    def _cond_features(self, condition, indices, height, width):
        enc = self.models.cond_encoder
        if condition is None:
            return None
        if isinstance(condition, MaskCondition):
            x = condition.tensor(height, width)
        else:
            x = condition.tensor(indices, height, width)
        if x.shape[1] != enc.in_channels:
            raise EchoMimicError(
                f"this model's condition encoder takes {enc.in_channels}-channel input but the condition has {x.shape[1]} "
                "channel(s): V1 audio models take a face mask, V1 landmark models take landmark drawings, V2 takes hand poses."
            )
        return enc(x.to(self.device, enc.conv_in.weight.dtype))

    def _check_cuda_graphs(self, device) -> None:
        """Before any work: recorded graphs need a CUDA device and weights that stay where they are."""
        if torch.device(device).type != "cuda":
            raise EchoMimicError(f"cuda_graphs needs a CUDA GPU, and this run is on '{device}'; switch cuda_graphs off.")
        if self.placement is not None and getattr(self.placement, "streamer", None) is not None:
            raise EchoMimicError("cuda_graphs cannot record a denoiser that is streamed block by block (low-VRAM mode): "
                                 "switch off either cuda_graphs or low_vram.")

    def _graphs_usable(self, den, device) -> bool:
        """Whether the loaded denoiser can be recorded: every weight and buffer on ``device``. A model manager
        may load it only in part when VRAM is short (ComfyUI casts the rest to the GPU layer by layer, from
        host memory); a recording would replay those copies from fixed host addresses, so the generation runs
        without graphs instead (same result), and says why."""
        away = off_device(den, device)
        if away:
            log.warning("cuda_graphs is off for this generation: %d of the denoiser's weights and buffers are not on "
                        "%s (e.g. %s): the GPU holds only part of the denoiser, the rest is copied in per layer. It runs "
                        "without graphs (same result). To get them back, free VRAM: fp8, a smaller size, or unload "
                        "other models.", len(away), device, away[0])
        return not away

    def _predict(self, call, group, n, latents, chunks, sched, t, kv, cfg, mask_feat, condition, h, w, deep=None):
        """One denoiser call for the windows ``group`` -> (their runs of frames, the predictions of the first
        ``n`` windows: (2 or 1, 4, c, h, w) views, uncond first with CFG). ``deep``: the generation's
        :class:`.deep_cache.DeepCache` (a full call keeps its features there, a partial call reads them)."""
        runs = [window_runs(wi) for wi in group]
        x_in = sched.scale_model_input(torch.cat([take_runs(latents, r, 2) for r in runs]), t)  # (m, 4, c, h, w)
        a = torch.stack([take_runs(chunks, r, 0) for r in runs])
        m = len(group)
        if mask_feat is not None:
            cond = mask_feat.expand(m, -1, -1, -1, -1)
        elif condition is not None:
            cond = torch.cat([self._cond_features(condition, wi, h, w) for wi in group])
        else:
            cond = None
        kw = deep.call_kwargs(runs) if deep is not None else {}
        if cfg:
            pred = call(torch.cat([x_in, x_in]), t, audio=a, cond=cond, reference=kv, uncond_rows=m, **kw)
        else:
            pred = call(x_in, t, audio=a, cond=cond, reference=kv, **kw)
        if isinstance(pred, tuple):  # a DeepCache full call: (prediction, the branch's input)
            pred, kept = pred
            deep.keep(kept, runs, n)
        return runs, ([pred[j::m] for j in range(n)] if cfg else [pred[j : j + 1] for j in range(n)])

    # -------------------------------------------------------------- main loop
    @torch.no_grad()
    def __call__(
        self,
        reference_image,
        audio,  # echomimic_lib.audio.AudioFeatures
        condition: MaskCondition | FrameCondition | None,
        settings: SampleSettings,
        progress: Callable[[int, int], None] | None = None,
        initial_latents: torch.Tensor | None = None,
        decode: bool = True,
        frame_sink: Callable | None = None,
        trace: Callable[[str, object], None] | None = None,
        resume=None,  # echomimic_lib.pipeline.resume.StepCheckpoint: the loop's state kept on disk
        cancel: Callable[[], None] | None = None,  # raises on Cancel (ComfyUI's); looked for inside each VAE call too
    ) -> SampleResult:
        s = settings
        s.validate()
        h, w = s.height, s.width
        audio_frames = audio.frame_count(s.fps)
        f = audio_frames if s.num_frames is None else min(int(s.num_frames), audio_frames)
        if f < 1:
            raise EchoMimicError("the audio is too short to make a single video frame.")
        if isinstance(condition, FrameCondition) and condition.num_frames < f:
            raise EchoMimicError(
                f"the condition sequence has {condition.num_frames} frames but the video needs {f}; retime it "
                "(loop / ping-pong / stretch) or shorten the audio."
            )
        den = self.models.denoiser
        device, dtype = self.device, self.dtype
        if s.cuda_graphs:
            self._check_cuda_graphs(device)
        if s.deep_cache > 1:
            check_branch(s.deep_cache_branch, den.cfg)
            if resume is not None:
                check_resumable(s.deep_cache)
        if self.placement is None:  # (a placement moves weights per stage, which would undo it)
            den.fuse_projections()
        sched = make_scheduler(**s.scheduler)
        sched.set_timesteps(s.steps, device="cpu")
        timesteps = [int(t) for t in sched.timesteps]

        if initial_latents is not None:
            latents = initial_latents.to(torch.float32).clone()
            if tuple(latents.shape) != (1, 4, f, h // 8, w // 8):
                raise EchoMimicError(f"initial latents must be (1, 4, {f}, {h // 8}, {w // 8}), got {tuple(latents.shape)}.")
        else:
            latents = initial_noise(s.seed, f, h, w, s.clamp_noise)
        latents = (latents * sched.init_noise_sigma).to(device)
        start = 0  # the first step to run: later than 0 when an earlier run of this request kept its state
        kept = resume.load(tuple(latents.shape)) if resume is not None else None
        if kept is not None:
            start, latents = kept[0] + 1, kept[1].to(device)

        ref_latents = self.encode_reference(reference_image, h, w)
        if trace:
            trace("ref_latents", ref_latents)
        kv = self.reference_kv(ref_latents)  # (the denoiser is loaded from here on)
        graphs = s.cuda_graphs and self._graphs_usable(den, device)
        cfg = s.cfg > 1.0
        mask_feat = self._cond_features(condition, None, h, w) if isinstance(condition, MaskCondition) else None

        windows0 = base_windows(f, s.context_frames, s.context_overlap)
        k = max(1, int(s.windows_per_batch))
        total = len(timesteps) * math.ceil(len(windows0) / k)
        # compiled blocks and recorded graphs are per input shape: the last group is padded to k windows (the
        # padding rows repeat a window and are dropped) so that a generation makes one shape, not two
        pad_groups = k > 1 and len(windows0) > k and (s.cuda_graphs or is_compiled(den))
        # every window is gathered and scattered by slices of runs of frames, audio chunks are moved to the
        # device once: nothing in the loop below reads from the device (see tests/test_host_sync.py)
        chunks = audio.chunks(0, f, s.fps, device=device, dtype=dtype)
        deep = DeepCache(s.deep_cache, s.deep_cache_branch, f, cfg) if s.deep_cache > 1 else None
        done, calls, finished = start * (total // len(timesteps)), 0, start - 1
        with CudaGraphRunner(den) if graphs else contextlib.nullcontext(den) as call, \
                _kept_on_interrupt(resume, lambda: (finished, latents)):  # graphs: released here
            for i, t in enumerate(timesteps):
                if i < start:
                    continue
                windows = shift_windows(windows0, i, s.window_shift, f)
                acc = torch.zeros((2 if cfg else 1, *latents.shape[1:]), device=device, dtype=torch.float32)
                count = torch.zeros(f, device=device, dtype=torch.float32)
                if deep is not None:
                    deep.begin_step(i)
                for g in range(0, len(windows), k):
                    group = windows[g : g + k]  # every window has the same length (base_windows)
                    padded = group + [group[-1]] * (k - len(group)) if pad_groups else group
                    runs, preds = self._predict(call, padded, len(group), latents, chunks, sched, t, kv, cfg, mask_feat,
                                                condition, h, w, deep)
                    calls += 1
                    if trace and i == 0:
                        trace("unet_call", torch.cat(preds).float())
                    for r, p in zip(runs, preds):  # the padding windows have no entry in preds
                        off = 0
                        for a0, b0 in r:
                            acc[:, :, a0:b0].add_(p[:, :, off : off + b0 - a0])
                            count[a0:b0].add_(1.0)
                            off += b0 - a0
                    done += 1
                    if progress is not None:
                        progress(done, total)
                if deep is not None:
                    deep.end_step()
                v = acc / count.view(1, 1, -1, 1, 1)
                v = v[0:1] + s.cfg * (v[1:2] - v[0:1]) if cfg else v
                latents = sched.step(v, t, latents, eta=0.0, return_dict=False)[0]
                finished = i
                if resume is not None:
                    resume.after_step(i, latents, last=i == len(timesteps) - 1)
                if trace:
                    trace(f"step{i}", (v, latents))
        if hasattr(kv, "release"):
            kv.release()  # join buffers (CPU) are not needed by the decode
        if deep is not None:
            deep.release()
        del kv, chunks, deep
        frames = self.decode(latents, s.decode_batch, frame_sink, cancel) if decode else None
        return SampleResult(frames, latents, s.fps, f, calls)


@contextlib.contextmanager
def _kept_on_interrupt(resume, state):
    """On any exception in the loop (Ctrl-C, SIGTERM, an error) the last finished step is kept for a resume; so too
    when the command line ends the process at an interrupt without waiting for this thread (io.file_safety)."""
    if resume is None:
        yield
        return
    from ..io.file_safety import forget_keeper, keep_on_interrupt

    def keep():
        if state()[0] >= 0:
            resume.interrupted(*state())

    keep_on_interrupt(keep)
    try:
        yield
    except BaseException:
        forget_keeper(keep)
        keep()
        raise
    finally:
        forget_keeper(keep)


def off_device(module: torch.nn.Module, device) -> list[str]:
    """Names of ``module``'s parameters and buffers that are not on ``device`` (an index-less device matches any
    index of its type)."""
    device = torch.device(device)

    def away(t: torch.Tensor) -> bool:
        return t.device.type != device.type or (device.index is not None and t.device.index != device.index)

    named = list(module.named_parameters()) + list(module.named_buffers())
    return [name for name, t in named if away(t)]
