"""``echomimic animate --version v3-flash``: EchoMimicV3 flash-pro from the command line (see jobs.animate_v3)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..modes import V3_LONG_MODES

SMOKE_SIZE = (64, 64)
V3_FPS = 25.0
# options of one family only: given (not at their default) to the other family, they are refused by name, not ignored
V1V2_ONLY = ("mode", "acc", "landmarks", "parts", "pose", "retime", "gesture_library", "expressiveness", "fps",
             "context_frames", "context_overlap", "no_face_crop", "mediapipe_model", "low_vram", "paste_back",
             "halfbody_crop", "align_poses", "stabilize", "cuda_graphs", "deep_cache", "deep_cache_branch")
V3_ONLY = ("prompt", "audio_cfg", "teacache", "no_color_transfer", "long_mode", "vae_tiling")


def add_v3_arguments(a) -> None:
    g = a.add_argument_group("EchoMimicV3 flash-pro (--version v3-flash)")
    g.add_argument("--prompt", default="A person is speaking.", help="what the video shows (umT5; cached per prompt)")
    g.add_argument("--audio-cfg", type=float, default=3.0, help="audio guidance scale (official 3.0; <= 1: one pass per step)")
    g.add_argument("--teacache", choices=["official", "off"], default="official",
                   help="official: the official CLI's always-on TeaCache (audio CFG has no effect in some steps); off: exact")
    g.add_argument("--no-color-transfer", action="store_true", help="skip the official colour transfer to the first frame")
    g.add_argument("--vae-tiling", action="store_true", help="the VAE encodes and decodes in overlapping 256-px tiles: "
                   "the decode's peak memory at 768 px drops from about 6.5 to 1.6 GB (the frames differ a little where "
                   "tiles meet); with --fp8 a 768 px shot peaks at about 4.7 GB")
    g.add_argument("--long-mode", choices=list(V3_LONG_MODES), default=V3_LONG_MODES[0],
                   help="speech longer than 81 frames, in chunks: reanchor (default): each chunk starts from the reference "
                        "(no identity drift; the pose returns to the reference's at each seam, crossfaded); continue: each "
                        "chunk goes on from the previous one's last 8 frames (the preview release's way: smooth seams, "
                        "identity can drift over long clips)")
    g.add_argument("--negative-prompt", default=None, help=argparse.SUPPRESS)  # refused with the reason (check_family_options)
    a.set_defaults(family_defaults={d: a.get_default(d) for d in V1V2_ONLY + V3_ONLY})
    from .v3_official import add_official_names

    add_official_names(a)  # infer_flash_pro.py's names: refused with this tool's (check_family_options)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def given(args, dests) -> list[str]:
    """The options among ``dests`` set to something other than their default (as flags)."""
    defaults = getattr(args, "family_defaults", {})
    return [_flag(d) for d in dests if d in defaults and getattr(args, d, defaults[d]) != defaults[d]]


def check_family_options(args) -> None:
    """Refuse the other family's options before any work: V1/V2 options with ``--version v3-flash``, V3 ones without."""
    from ..errors import EchoMimicError
    from .v3_official import check_official_names

    check_official_names(args)  # --image_path, --audio_guidance_scale, ...: all named at once, with this tool's names
    if getattr(args, "negative_prompt", None) is not None:  # (Wan and the official V3 scripts have one)
        raise EchoMimicError("--negative-prompt: EchoMimicV3 flash-pro has no negative prompt (its guidance is audio only, "
                             "as the official flash-pro, whose negative prompt is encoded and never used): drop it; say what "
                             "the video shows with --prompt, and how closely it follows the speech with --audio-cfg")
    if args.version == "v3-flash":
        if args.cfg:
            raise EchoMimicError("--cfg is the V1/V2 guidance; EchoMimicV3 flash-pro uses audio guidance only: use --audio-cfg")
        wrong = [f for f in given(args, V1V2_ONLY) if not (f == "--fps" and args.fps == V3_FPS)]  # V3's own rate: fine
        if wrong:
            memory = ("; for less GPU memory EchoMimicV3 has --fp8 (about 1.75 GB less) and --vae-tiling"
                      if "--low-vram" in wrong else "")
            raise EchoMimicError(f"{' and '.join(wrong)} {'is a V1/V2 option' if len(wrong) == 1 else 'are V1/V2 options'}; "
                                 f"EchoMimicV3 flash-pro does not take it (it renders {V3_FPS:g} fps, without face crop, "
                                 f"landmarks, poses or context windows): drop it, or use --version v1/v2{memory}")
    else:
        wrong = given(args, V3_ONLY)
        if wrong:
            raise EchoMimicError(f"{' and '.join(wrong)} {'is an EchoMimicV3' if len(wrong) == 1 else 'are EchoMimicV3'} "
                                 "flash-pro option; EchoMimic V1/V2 do not take it: drop it, or add --version v3-flash")


def cmd_animate_v3(args) -> int:
    from ..jobs.models_folder import default_models_dir
    from .common import say as _say
    from ..devices import resolve_device, resolve_dtype, resolve_vae_dtype
    from ..errors import EchoMimicError
    from ..jobs.animate_v3 import run_v3
    from ..jobs.lora_args import request_fields
    from ..jobs.v3_plan import V3Request

    check_family_options(args)
    lora, lora_strength = request_fields(args.lora, args.lora_strength)
    if not args.audio:
        raise EchoMimicError("--audio is required for EchoMimicV3 (speech drives the video)")
    from ..jobs.speech_input import probe_speech

    if Path(args.audio).is_file():  # as V1/V2's: a wrong file refused before torch loads or a smoke run's tiny set is
        probe_speech(args.audio)  # written (a missing one: said in the plan's order, with the other inputs)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    root = Path(args.models) if args.models else default_models_dir()
    if args.smoke:
        from ..models.wan.tiny import ensure_tiny_v3

        folder = ensure_tiny_v3(root / "tiny-v3")
    else:
        folder = root / "v3-flash"
    w = args.width or (SMOKE_SIZE[0] if args.smoke else 768)
    h = args.height or (SMOKE_SIZE[1] if args.smoke and not args.width else w)
    req = V3Request(reference=args.reference, audio=args.audio, output=args.output, models=str(folder), prompt=args.prompt,
                    steps=args.steps or (2 if args.smoke else 8), audio_cfg=args.audio_cfg,
                    seed=43 if args.seed is None else args.seed, size=(w, h), length=args.length, smoke=args.smoke,
                    long_mode=args.long_mode, teacache=args.teacache, color_transfer=not args.no_color_transfer, device=str(device), dtype=dtype,
                    vae_dtype=resolve_vae_dtype(args.dtype, device, dtype, "wan"),
                    download=not (args.offline or args.smoke), lora=lora, lora_strength=lora_strength,
                    compile=args.compile, resumable=args.resumable, fp8=args.fp8, vae_tiling=args.vae_tiling)
    s = run_v3(req)
    resumed = f", chunks 1..{s['resumed_after_chunk']} from the kept state" if s.get("resumed_after_chunk") else ""
    _say(f"wrote {s['output']}: {s['frames']} frames ({s['video_seconds']} s of video, {s['size'][0]}x{s['size'][1]}) "
         f"in {s['seconds']} s{resumed}")
    return 0
