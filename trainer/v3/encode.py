"""Frozen encoders of an EchoMimicV3 LoRA run, applied once per window and cached on disk.

Per window (:mod:`.windows`), as the inference computes them for its reference and speech:

- ``latents`` (16, T, h, w): the Wan VAE's normalised posterior mode of the window's frames (the training target);
- ``y`` (20, T, h, w): the condition, 4 mask channels + the VAE mode of the first frame followed by mid-grey frames
  (:func:`echomimic_lib.pipeline.wan.sampler.condition_latents`, frame 0 known);
- ``clip`` (257, width): CLIP-vision features of the first frame;
- ``audio`` (F, layers, C): chinese-wav2vec2 states at 25 fps (zeros for a silent clip); the step cuts the 5-frame
  windows from them.

Each window is one safetensors file under the cache folder, named by a hash of everything it depends on (the clip's
files, the window, the size, the encoder files, the dtype): another VAE, size or dtype finds no file and encodes anew.
Files are written whole (temporary name, then renamed), so an interrupted run leaves no half-written sample. The
prompts' umT5 states go to the inference's prompt cache (``<v3-flash>/prompt_cache``), umT5 loaded once and freed.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
from pathlib import Path

import torch

from .windows import Window, window_audio, window_pixels

FORMAT = 1


def _file_id(path: Path) -> list:
    """(name, size, mtime) of a file, or of every file of a folder (sorted)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, int(p.stat().st_mtime)] for p in files]


def encoder_id(files: dict, dtype: torch.dtype) -> str:
    """What the cached tensors depend on besides the window: the VAE, wav2vec2 and CLIP files and the dtype."""
    parts = {k: _file_id(Path(files[k])) for k in ("vae", "wav2vec2", "clip")}
    return hashlib.sha256(json.dumps([FORMAT, parts, str(dtype)]).encode()).hexdigest()[:16]


def window_key(win: Window, width: int, height: int, enc_id: str) -> str:
    clip_meta = Path(win.clip_dir) / "clip.json"
    stamp = [clip_meta.stat().st_size, int(clip_meta.stat().st_mtime)] if clip_meta.is_file() else []
    text = json.dumps([str(Path(win.clip_dir).resolve()), stamp, win.start, win.frames, win.silent, width, height, enc_id])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Encoders:
    """The VAE, wav2vec2 and CLIP-vision of a v3-flash folder (``files``: :func:`echomimic_lib.model_set.ensure_v3`)."""

    def __init__(self, files: dict, device, dtype: torch.dtype):
        from echomimic_lib.audio.wav2vec import load_wav2vec
        from echomimic_lib.models.wan.vae import load_wan_vae
        from echomimic_lib.pipeline.wan.encoders import load_clip_vision

        self.files, self.device, self.dtype = files, torch.device(device), dtype
        self.vae = load_wan_vae(files["vae"], dtype=dtype, device=self.device)
        self.wav2vec = load_wav2vec(files["wav2vec2"])  # fp32 on the CPU, as the inference
        self.clip = load_clip_vision(files["clip"], device=self.device, dtype=dtype)

    @torch.no_grad()
    def encode(self, win: Window, width: int, height: int) -> dict[str, torch.Tensor]:
        from echomimic_lib.models.wan import vae as wan_vae
        from echomimic_lib.pipeline.wan.encoders import clip_features
        from echomimic_lib.pipeline.wan.sampler import condition_latents

        pixels = window_pixels(win, width, height)
        video = torch.from_numpy(pixels).permute(3, 0, 1, 2)[None].float().div(255).mul(2).sub(1)
        latents = wan_vae.encode_mode(self.vae, video)[0].float().cpu()
        y = condition_latents(self.vae, pixels[0], win.frames)[0].float().cpu()
        clip = clip_features(self.files["clip"], pixels[0], device=self.device, dtype=self.dtype, model=self.clip)[0]
        if win.silent:
            cfg = self.wav2vec.model.config
            audio = torch.zeros(win.frames, cfg.num_hidden_layers, cfg.hidden_size)
        else:
            iv = self.wav2vec.input_values(window_audio(win))
            audio = self.wav2vec.hidden_states(iv, win.frames).float().cpu()
        return {"latents": latents, "y": y, "clip": clip.float(), "audio": audio.to(torch.float16)}

    def free(self) -> None:
        dev = self.device
        self.vae = self.wav2vec = self.clip = None
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()


class EncodedWindows:
    """The cache folder of one run's windows: :meth:`fill` encodes what is missing, :meth:`load` reads one."""

    def __init__(self, folder: Path, windows: list[Window], width: int, height: int, enc_id: str):
        self.folder, self.windows, self.width, self.height = Path(folder), windows, width, height
        self.keys = [window_key(w, width, height, enc_id) for w in windows]

    def path(self, i: int) -> Path:
        k = self.keys[i]
        return self.folder / k[:2] / f"{k}.safetensors"

    def missing(self) -> list[int]:
        return [i for i in range(len(self.windows)) if not self.path(i).is_file()]

    def fill(self, make_encoders, todo: list[int] | None = None, progress=None) -> int:
        """Encode the windows ``todo`` (default: every missing one; several processes pass disjoint shares of one
        :meth:`missing` list, taken by all before any writes). ``make_encoders()`` is called only when there is work;
        its encoders are freed before returning. Returns how many windows were written."""
        from safetensors.torch import save_file

        from echomimic_lib.io.os_errors import writing

        todo = self.missing() if todo is None else todo
        if not todo:
            return 0
        enc = make_encoders()
        try:
            for n, i in enumerate(todo):
                tensors = {k: v.contiguous() for k, v in enc.encode(self.windows[i], self.width, self.height).items()}
                dest = self.path(i)
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
                try:
                    with writing(dest):  # safetensors' full disk: the file named, in the one form
                        save_file(tensors, str(tmp), metadata={"clip": self.windows[i].clip_id, "start": str(self.windows[i].start)})
                        os.replace(tmp, dest)
                finally:
                    tmp.unlink(missing_ok=True)
                if progress:
                    progress(n + 1, len(todo))
        finally:
            enc.free()
        return len(todo)

    def load(self, i: int) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.path(i)))


def prompt_states(files: dict, prompts: list[str], cache_dir: Path, device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """{prompt: (L, text_dim) umT5 states}, from the prompt cache; umT5 loads once for the missing ones, then is freed."""
    from echomimic_lib.jobs.animate_v3 import encode_prompts
    from echomimic_lib.pipeline.wan.encoders import encode_prompt

    got = encode_prompts(files["umt5"], prompts, cache_dir, device, dtype)
    out = {}
    for p in prompts:
        t = got[p] if p in got else encode_prompt(files["umt5"], p, cache_dir=cache_dir, device=device, dtype=dtype)
        out[p] = t[0].float().cpu() if t.dim() == 3 else t.float().cpu()
    return out
