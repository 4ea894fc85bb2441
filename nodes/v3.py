"""EchoMimicV3 flash-pro nodes: model loader, audio encoder, sampler (thin classes over echomimic_lib).

The transformer is handed to ComfyUI's model manager (ModelPatcher, castable layers: --lowvram, "Unload
Models" work on it). Text and image come from core nodes: CONDITIONING from Load CLIP (type wan, umT5) +
CLIP Text Encode (the padded 512 tokens are equivalent to the official trimmed prompt: both end in zeros,
which the model attends), CLIP_VISION_OUTPUT from CLIP Vision Encode (clip_vision_h, crop none; the
official encodes the resized reference with a bicubic resize, core with an antialiased one: a small
difference), and core's VAE (Wan 2.1; latents normalised with the official 16 means/stds, which are
ComfyUI's Wan21 latent format values). wav2vec2 runs on the CPU in float32, as the official.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..echomimic_lib.errors import EchoMimicError, as_whole
from ..echomimic_lib.jobs.speech_length import MAX_LENGTH
from ..echomimic_lib.memory.fp8 import check_fp8, compute_param
from ..echomimic_lib.modes import V3_LONG_MODES
from ..echomimic_lib.speed import OptionNames
from . import comfy_bridge as C
from . import names, paths
from .base import checks_links, socket
from .payloads import check_finite, first_image, trim_audio

V3_MODEL = "ECHOMIMIC_V3_MODEL"
V3_AUDIO = "ECHOMIMIC_V3_AUDIO"
FLASH_FILE = "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NODE_V3_NAMES = {"steps": "steps", "audio_cfg": "audio_cfg", "long_mode": "long_mode", "size": ("size", "size"),
                 "teacache": "teacache"}
NODE_NAMES = OptionNames("'compile' (EchoMimic V3 Loader)", "cuda_graphs (not an EchoMimicV3 option)",
                         "low_vram (not an EchoMimicV3 option)", "start ComfyUI on an NVIDIA GPU (without --cpu)")


@dataclass(eq=False)
class V3Handle:
    patcher: Any  # ModelPatcher around the WanV3Transformer
    wav2vec: Any  # echomimic_lib.audio.wav2vec.Wav2VecV3 (CPU, fp32)
    report: str


@dataclass(eq=False)
class V3Audio:
    samples: np.ndarray  # 16 kHz, loudness-normalised, cut to the frames
    frames: int
    audio: dict  # the ComfyUI AUDIO, for muxing


socket(V3_MODEL, V3Handle, "EchoMimic V3 Loader or EchoMimic V3 LoRA")
socket(V3_AUDIO, V3Audio, "EchoMimic V3 Audio Encoder")


def v3_folders() -> list[str]:
    names = set()
    for root in paths.echomimic_roots():
        if root.is_dir():  # the sub-folders of models/echomimic holding the V3 layout (no deep walk)
            names.update(p.name for p in root.iterdir() if (p / FLASH_FILE).is_file())
    return sorted(names) or ["v3-flash"]


def checked_reference(image, size, steps, audio_cfg, teacache, long_mode):
    """(the reference as uint8 (H, W, 3), sample height, width). Linked values are not range-checked by ComfyUI:
    refused here, before the transformer is loaded."""
    from ..echomimic_lib.jobs.v3_plan import check_v3_settings
    from ..echomimic_lib.pipeline.wan.sampler import sample_size

    check_v3_settings(steps, audio_cfg, None, long_mode, (size, size), teacache=teacache, names=NODE_V3_NAMES)
    ref = first_image(image, "image")
    check_finite(image[:1], "image", "connect a picture (Load Image).")  # NaN / inf were pixels of 0 without a word
    return (ref, *sample_size(ref.shape[1], ref.shape[0], (size, size)))


def checked_conditioning(cfg, positive, clip_vision_output, vae, seed) -> tuple:
    """(prompt, CLIP vision states, seed as an int), refused before the transformer loads: another text encoder, image
    encoder or VAE than V3's was a torch shape error deep in the model, and a linked seed past 2^64-1 (or not whole)
    an overflow in torch's generator."""
    prompt = positive[0][0] if positive else None
    clip = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if prompt is None or clip is None:
        raise EchoMimicError("connect CLIP Text Encode (Load CLIP type wan) on 'positive' and CLIP Vision Encode "
                             "(clip_vision_h, crop none) on 'clip_vision_output'.")
    if prompt.shape[-1] != cfg.text_dim:
        raise EchoMimicError(f"positive: a text embedding of width {prompt.shape[-1]}; EchoMimicV3 takes umT5-xxl's "
                             f"{cfg.text_dim}: Load CLIP with umt5_xxl and type wan, into CLIP Text Encode.")
    if clip.shape[-1] != cfg.clip_dim:
        raise EchoMimicError(f"clip_vision_output: image features of width {clip.shape[-1]}; EchoMimicV3 takes "
                             f"{cfg.clip_dim} (Load CLIP Vision: clip_vision_h, then CLIP Vision Encode, crop none).")
    layout = (getattr(vae, "latent_channels", 16), getattr(vae, "latent_dim", 3))  # ComfyUI's VAE says its layout
    if layout != (16, 3):
        raise EchoMimicError(f"vae: not the Wan 2.1 VAE ({layout[0]} latent channels, {layout[1]}-D latents); "
                             "Load VAE with wan_2.1_vae (the Wan 2.2 VAE and image VAEs do not fit EchoMimicV3).")
    from ..echomimic_lib.pipeline.settings import whole_seed

    return prompt, clip, whole_seed(seed)  # as the V1/V2 Sampler's: 0..2^64-1, -1 refused (torch took it as 2^64-1)


@checks_links
class EchoMimicV3Loader:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    RETURN_TYPES = (V3_MODEL,)
    RETURN_NAMES = ("v3_model",)
    OUTPUT_TOOLTIPS = ("The flash-pro transformer (managed by ComfyUI) and its wav2vec2 audio encoder.",)
    DESCRIPTION = ("Loads EchoMimicV3 flash-pro from models/echomimic/<folder>/ (Wan2.1-Fun-V1.1-1.3B-InP/ + "
                   "echomimicv3-flash-pro/ + chinese-wav2vec2-base/), strictly: a missing audio key is an error.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"folder": (v3_folders(), {"tooltip": "A folder in models/echomimic holding the V3 layout."}),
                             "dtype": (list(DTYPES), {"default": "auto", "tooltip": "auto: ComfyUI's choice for the device."})},
                "optional": {"auto_download": ("BOOLEAN", {"default": False, "tooltip": (
                    "Download what the folder lacks from Hugging Face (base transformer, flash-pro file, wav2vec2: about "
                    "7.2 GB; the text / image encoders and the VAE come from core's loaders). Files already there are kept.")}),
                             "compile": ("BOOLEAN", {"default": False, "tooltip": (
                    "Speed (GPU): regional torch.compile of the transformer (each of its blocks). The first run "
                    "compiles the blocks (minutes on a CPU), and the first run at another length or size compiles "
                    "them once more; later runs reuse them. Not measured on a GPU yet. The output differs only by "
                    "float rounding. Applied once, when the model is loaded.")}),
                             "fp8": ("BOOLEAN", {"default": False, "tooltip": (
                    "Store the transformer blocks' weights in fp8 (e4m3fn; upcast layer by layer): about 1.75 GB less "
                    "RAM/VRAM than bf16 (the 1.86 B-parameter transformer: 3.73 -> 1.98 GB); the output changes a "
                    "little. LoRAs still apply (ComfyUI patches the fp8 weights). Not on Apple MPS.")})}}

    @classmethod
    def VALIDATE_INPUTS(cls, folder=None):
        return names.check(cls, {"folder": "models/echomimic"}, folder=folder)

    def execute(self, folder, dtype, auto_download=False, compile=False, fp8=False):
        from ..echomimic_lib.audio.wav2vec import load_wav2vec
        from ..echomimic_lib.models.wan import load_v3_transformer
        from ..echomimic_lib.speed import check_speed_options, compile_transformer  # (see NODE_NAMES)

        check_speed_options(C.torch_device(), compile=bool(compile), names=NODE_NAMES)  # (a warning on the CPU)
        if fp8:
            check_fp8(C.torch_device())

        root = paths.find_named(paths.echomimic_roots(), folder, "EchoMimicV3 folder", want_dir=True)
        if auto_download:  # into the folder found, else models/echomimic/<folder> (checked: stays inside it)
            from ..echomimic_lib.model_set import ensure_v3
            from ..echomimic_lib.models.wan.sources import COMFY_PARTS

            root = root or paths.safe_child(paths.echomimic_roots()[0], folder, "EchoMimicV3 folder")
            ensure_v3(root, download=True, parts=COMFY_PARTS)
        if root is None or not (root / FLASH_FILE).is_file():
            raise EchoMimicError(f"EchoMimicV3 folder '{folder}' not found (or without {FLASH_FILE}) in "
                                 f"{', '.join(map(str, paths.echomimic_roots()))}. Switch on auto_download, or get the "
                                 "files with: echomimic download --weights v3-flash (see docs/v3.md).")
        if not auto_download:  # every missing part named before any is read (no wav2vec2: a FileNotFoundError)
            from ..echomimic_lib.errors import MissingWeightsError
            from ..echomimic_lib.model_set import resolve_v3
            from ..echomimic_lib.models.wan.sources import COMFY_PARTS

            try:
                resolve_v3(root, COMFY_PARTS)
            except MissingWeightsError as exc:
                raise MissingWeightsError(f"{exc}\nOr switch on auto_download in EchoMimic V3 Loader.", exc.missing) from None
        from ..echomimic_lib.models.wan.loader import check_v3_headers

        dt = DTYPES[dtype] or C.auto_dtype(C.torch_device())
        check_v3_headers(root / "Wan2.1-Fun-V1.1-1.3B-InP", root / FLASH_FILE)  # another model's files: from the headers
        wav2vec = load_wav2vec(root / "chinese-wav2vec2-base")  # first: a damaged download is named before the 3.7 GB load
        model, report = load_v3_transformer(root / "Wan2.1-Fun-V1.1-1.3B-InP", root / FLASH_FILE, dtype=dt,
                                            device=C.offload_device())
        if fp8:  # before ComfyUI manages it: its patches (LoRAs) then round into the fp8 weights
            from ..echomimic_lib.models.wan import transformer_to_fp8

            transformer_to_fp8(model)
        patcher = C.managed_model("v3_transformer", model)
        if compile:  # once, after every weight change of the load (ComfyUI's LoRA patches change weights, not code)
            compile_transformer(model)
        return (V3Handle(patcher, wav2vec, report.summary()),)


@checks_links
class EchoMimicV3AudioEncoder:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    RETURN_TYPES = (V3_AUDIO, "INT")
    RETURN_NAMES = ("v3_audio", "frame_count")
    OUTPUT_TOOLTIPS = ("The normalised 16 kHz speech and its frame count (encoded by wav2vec2 in the sampler).",
                       "Video frames at 25 fps (4k+1).")
    DESCRIPTION = ("Speech for V3: 16 kHz, loudness to -23 LUFS, at most max_frames at 25 fps (4k+1). More than 81 "
                   "frames are rendered in chunks re-anchored on the reference (not official: the official stops at 81).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": (V3_MODEL, {"tooltip": "From EchoMimic V3 Loader."}),
                             "audio": ("AUDIO", {"tooltip": "Speech that drives the video (Load Audio)."}),
                             "max_frames": ("INT", {"default": 81, "min": 1, "max": MAX_LENGTH,
                                                    "tooltip": "81 = one official shot; more: chunked long video."})}}

    def execute(self, model, audio, max_frames):
        from ..echomimic_lib.audio import check_audible, read_raw_audio
        from ..echomimic_lib.audio.wav2vec import frame_count, prepare_samples, resample_16k

        whole = as_whole(max_frames)  # a linked 81.0 from a math node is 81
        most = MAX_LENGTH  # the command line's --length bound (and the widget's max)
        if whole is None or not 1 <= whole <= most:  # a linked value is not range-checked by ComfyUI
            raise EchoMimicError(f"max_frames {max_frames!r}: give a whole number, 1 or more, at most {most} (81 = one "
                                 "official shot; more: a chunked long video).")
        max_frames = whole
        wave = audio.get("waveform") if isinstance(audio, dict) else None
        if not isinstance(wave, torch.Tensor) or wave.numel() == 0:
            raise EchoMimicError("audio: expected a non-empty ComfyUI AUDIO (connect Load Audio).")
        raw = read_raw_audio(audio)  # [B, C, T] with B = 1, [C, T] or [T]; finite; a positive sample rate
        check_audible(raw, "Connect a clip with audible speech, or check that Load Audio picked the right file.")
        mono = raw.samples.mean(axis=0).astype(np.float32, copy=False)  # (as echomimic v3 does)
        rate = raw.sample_rate
        frames = frame_count(mono.shape[0] / rate, max_frames)
        # The whole clip is resampled, not just the frames' part: the loudness gain is measured over the whole clip (as
        # the official), so a clip cut first would be normalised differently (up to 1.3 dB on the test clips).
        return (V3Audio(prepare_samples(resample_16k(mono, rate), frames), frames, audio), frames)


@checks_links
class EchoMimicV3Sampler:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE", "FLOAT", "AUDIO")
    RETURN_NAMES = ("frames", "fps", "audio")
    OUTPUT_TOOLTIPS = ("The video frames (colour-transferred to the first frame if asked).", "25 fps.",
                       "The audio cut to the video, for Create Video.")
    DESCRIPTION = "EchoMimicV3 flash-pro: Flow-UniPC, audio-only CFG, official TeaCache or off, 25 fps."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (V3_MODEL, {"tooltip": "From EchoMimic V3 Loader."}),
            "v3_audio": (V3_AUDIO, {"tooltip": "From EchoMimic V3 Audio Encoder."}),
            "positive": ("CONDITIONING", {"tooltip": "CLIP Text Encode with Load CLIP (umT5-xxl, type wan)."}),
            "clip_vision_output": ("CLIP_VISION_OUTPUT", {"tooltip": "CLIP Vision Encode (clip_vision_h, crop none) of the image."}),
            "vae": ("VAE", {"tooltip": "The Wan 2.1 VAE (Load VAE: wan_2.1_vae)."}),
            "image": ("IMAGE", {"tooltip": "The reference picture (the first image is used)."}),
            "size": ("INT", {"default": 768, "min": 64, "max": 2048, "step": 16,
                             "tooltip": "Target area size x size; the picture keeps its aspect, sides multiples of 16."}),
            "steps": ("INT", {"default": 8, "min": 1, "max": 100, "tooltip": "Flow-UniPC steps (official 8)."}),
            "audio_cfg": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                    "tooltip": "Audio guidance (official 3.0); 1 or less: one pass per step."}),
            "seed": ("INT", {"default": 43, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "Noise seed (CPU float32 draw), 0 or more; the same seed and inputs give the same "
                             "video (control 'randomize': a new seed each run)."}),
            "teacache": (["official", "off"], {"default": "official", "tooltip": "official: as the official CLI "
                         "(always on; audio CFG has no effect in some steps); off: every call computed."}),
            "color_transfer": ("BOOLEAN", {"default": True, "tooltip": "The official colour transfer to the first frame."}),
        }, "optional": {
            "long_mode": (list(V3_LONG_MODES), {"default": V3_LONG_MODES[0], "tooltip": "Audio longer than 81 frames, in "
                          "chunks: reanchor: each chunk starts from the picture (no identity drift; the pose returns to the "
                          "picture's at each seam, crossfaded); continue: each chunk goes on from the previous one's last 8 "
                          "frames (smooth seams; identity can drift over long clips)."}),
        }}

    def execute(self, model, v3_audio, positive, clip_vision_output, vae, image, size, steps, audio_cfg, seed, teacache,
                color_transfer, long_mode="reanchor"):
        return self.sample(model, v3_audio, positive, clip_vision_output, vae, image, size, steps, audio_cfg, seed,
                           teacache, color_transfer, long_mode)

    def sample(self, model, v3_audio, positive, clip_vision_output, vae, image, size, steps, audio_cfg, seed, teacache,
               color_transfer, long_mode="reanchor", sink=None):
        """The run: (frames IMAGE, 25.0, the audio cut to the video). With ``sink(block)`` each (k, H, W, 3) uint8
        block goes there as it is made (one block for at most 81 frames, else one per chunk), nothing is kept and
        None is returned (EchoMimic V3 Sampler (to file), :mod:`.to_file`). The IMAGE is made as the V1/V2 Sampler's
        (:class:`echomimic_lib.pipeline.decode.HostFrames`)."""
        size, steps = (as_whole(v) if as_whole(v) is not None else v for v in (size, steps))  # a linked 768.0 is 768
        ref, h, w = checked_reference(image, size, steps, audio_cfg, teacache, long_mode)
        batch = None
        if sink is None:  # the frames are returned as one IMAGE batch in host memory, and one chunk is made at a time
            from ..echomimic_lib.pipeline.decode import HostFrames
            from ..echomimic_lib.pipeline.wan.memory import chunk_host_bytes

            batch = HostFrames(v3_audio.frames, h, w, fix="EchoMimic V3 Sampler (to file)",
                               working=chunk_host_bytes(min(v3_audio.frames, 81), h, w))
        try:
            self._run(model, v3_audio, positive, clip_vision_output, vae, ref, h, w, steps, audio_cfg, seed, teacache,
                      color_transfer, long_mode, sink or batch.add)
        except BaseException:
            if batch is not None:
                batch.release()  # Cancel, an error: the IMAGE's memory goes now, not with the traceback
            raise
        if sink is not None:
            return None
        frames = batch.result()
        return (frames, 25.0, trim_audio(v3_audio.audio, frames.shape[0], 25.0))

    def _run(self, model, v3_audio, positive, clip_vision_output, vae, ref, h, w, steps, audio_cfg, seed, teacache,
             color_transfer, long_mode, emit):
        """Denoise and decode chunk by chunk, each (k, H, W, 3) uint8 block to ``emit``; Cancel is looked for after
        each step and after each block."""
        from ..echomimic_lib.models.wan.vae import PixelVAE
        from ..echomimic_lib.pipeline.wan.long import iter_long
        from ..echomimic_lib.pipeline.wan.sampler import V3Settings, generate, resize_reference

        ref_u8 = resize_reference(ref, h, w)
        net = model.patcher.model.net
        prompt, clip, seed = checked_conditioning(net.cfg, positive, clip_vision_output, vae, seed)
        settings = V3Settings(steps=steps, audio_cfg=audio_cfg, seed=seed, teacache=teacache,
                              teacache_skip_start=min(5, steps), color_transfer=color_transfer)
        from ..echomimic_lib.pipeline.wan.memory import denoise_bytes

        dtype = compute_param(net).dtype  # not an fp8-stored weight
        C.load_models([model.patcher], memory_required=denoise_bytes(net.cfg, min(v3_audio.frames, 81), h, w, dtype))
        codec = PixelVAE(vae, check=C.check_interrupt)  # Cancel between the VAE's latent frames too
        C.check_interrupt()
        pbar = C.progress_bar(steps)
        preview = C.latent_previewer(C.torch_device(), "Wan21")  # None when ComfyUI's previews are off
        shown = {}

        def trace(name, value):  # each step's latents -> a preview shown with that step's progress
            if name.endswith("_latents"):
                shown["preview"] = preview(value)

        def on_step(done, total):
            pbar.update_absolute(done, total, shown.pop("preview", None))  # in ComfyUI this also raises on Cancel
            C.check_interrupt()

        with torch.no_grad():
            if v3_audio.frames <= 81:
                windows = model.wav2vec.windows(v3_audio.samples, v3_audio.frames)
                blocks = [generate(net, codec, ref_u8, prompt, clip, windows, settings, on_step=on_step,
                                   trace=trace if preview else None).frames]
            else:
                blocks = iter_long(net, codec, model.wav2vec, ref_u8, prompt, clip, v3_audio.samples, v3_audio.frames,
                                   settings, on_step=on_step, trace=trace if preview else None, mode=long_mode)
            for block in blocks:
                emit(block)
                C.check_interrupt()  # Cancel while a long clip's chunks are decoded: stops after this one
