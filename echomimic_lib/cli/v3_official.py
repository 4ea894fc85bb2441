"""The official EchoMimicV3 scripts' option names (``infer_flash_pro.py``, ``run_flash_pro.sh``) given to
``echomimic animate``: refused together, before any file is read, with the command written in this tool's names (was
argparse's usage screen and "unrecognized arguments", one name at a time)."""
from __future__ import annotations

import argparse
import shlex

SCRIPT = "the official EchoMimicV3 script's (infer_flash_pro.py)"
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}
_MEMORY = "for less GPU memory use --fp8 (the transformer in float8) and --vae-tiling; the text and image encoders " \
          "never stay on the GPU here"


def _q(values) -> str:
    return " ".join(shlex.quote(str(v)) for v in values)


def _memory(values) -> str | None:
    return "--fp8" if any("float8" in str(v) for v in values) else None


# official name -> how it is written here: an option (the values follow it), a function of the values (None: no
# counterpart, the reason in DROPPED), or None
RENAMED = {
    "image_path": "--reference", "audio_path": "--audio", "num_inference_steps": "--steps",
    "audio_guidance_scale": "--audio-cfg", "video_length": "--length", "lora_path": "--lora", "lora_weight": "--lora-strength",
    "save_path": lambda v: f"-o {shlex.quote(str(v[0]).rstrip('/') + '/output.mp4') if v else 'OUT.mp4'}",
    "sample_size": lambda v: f"--width {v[-1]} --height {v[0]}" if len(v) == 2 else "--width W --height H",
    "weight_dtype": lambda v: f"--dtype {_DTYPES.get(str(v[0]).lower(), 'bf16') if v else 'bf16'}",
    "GPU_memory_mode": _memory,
    "model_name": lambda v: "--models DIR", "transformer_path": lambda v: "--models DIR",
    "wav2vec_model_dir": lambda v: "--models DIR",
}
DROPPED = {
    "guidance_scale": "no effect: flash-pro's guidance is audio only, --audio-cfg",
    "negative_prompt": "flash-pro has no negative prompt, it is encoded and never used: say what the video shows with --prompt",
    "neg_scale": "no negative prompt in flash-pro", "neg_steps": "no negative prompt in flash-pro",
    "audio_scale": "fixed at 1: the official code ignores it",
    "sampler_name": "Flow-UniPC, as the official run", "shift": "fixed as the official run sets it",
    "enable_teacache": "TeaCache is on by default here, --teacache official; --teacache off: exact",
    "teacache_threshold": "fixed as the official run: 0.1, the first 5 steps computed",
    "num_skip_start_steps": "fixed as the official run: 0.1, the first 5 steps computed",
    "teacache_offload": "not needed here", "config_path": "the set's own config.json is read",
    "ckpt_idx": "the set's safetensors file is read", "vae_path": "the set's VAE is read",
    "add_prompt": "give the whole text with --prompt", "mouth_prompts": "not used by flash-pro",
    "use_dynamic_cfg": "no text guidance in flash-pro", "use_dynamic_acfg": "not offered",
    "cfg_skip_ratio": "not offered", "enable_riflex": "not offered", "riflex_k": "not offered",
    "use_un_ip_mask": "not offered", "ulysses_degree": "one GPU per run here", "ring_degree": "one GPU per run here",
    "fsdp_dit": "one GPU per run here",
}
NAMES = tuple(RENAMED) + tuple(DROPPED)


class _Official(argparse.Action):
    """Records the official option and its values (refused by :func:`check_official_names`, with every other one). The
    required options (--reference, -o) are not asked for by argparse once one of these is seen: the refusal that
    follows names them, in this tool's words."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = list(getattr(namespace, "official_names", None) or [])
        seen.append((self.dest, list(values or []), option_string))
        namespace.official_names = seen
        for action in parser._actions:  # (this parse's parser only: build_parser makes a new one each run)
            if action.required:
                action.required = False


def add_official_names(parser) -> None:
    """Hidden options for every official name (underscored as the script writes it, and with dashes)."""
    parser.set_defaults(official_names=None)
    for name in NAMES:
        spellings = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        spellings = [s for s in spellings if s not in parser._option_string_actions]  # (--negative-prompt: its own)
        if spellings:
            parser.add_argument(*spellings, dest=name, nargs="*", action=_Official, help=argparse.SUPPRESS)


def check_official_names(args) -> None:
    """Refuse every official option name given, at once, with the same command in this tool's names."""
    seen = getattr(args, "official_names", None)
    if not seen:
        return
    from ..errors import EchoMimicError

    written, dropped, given = [], [], []
    for name, values, spelling in seen:
        given.append(spelling)
        rule = RENAMED.get(name)
        if callable(rule):
            here = rule(values)
            (written.append(here) if here else dropped.append(f"{spelling}: {_MEMORY}"))
        elif rule:
            written.append(f"{rule} {_q(values)}".rstrip())
        else:
            dropped.append(f"{spelling}: {DROPPED[name]}")
    written = list(dict.fromkeys(written))
    parts = [f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} {SCRIPT} option name{'s' if len(given) > 1 else ''}"]
    if written:
        parts.append(f"here write `echomimic animate --version v3-flash {' '.join(written)}` (--prompt, --seed and "
                     "--fps 25 keep their names)")
    if "--models DIR" in written:
        parts.append("--models DIR is the folder holding v3-flash/: move or link the official download's "
                     "Wan2.1-Fun-V1.1-1.3B-InP/, echomimicv3-flash-pro/ and chinese-wav2vec2-base/ into DIR/v3-flash/ "
                     "(the text and image encoders are fetched there unless --offline: docs/v3.md)")
    if dropped:
        parts.append(f"drop {'; '.join(dropped)}")
    raise EchoMimicError("; ".join(parts) + ". Nothing was read or loaded.")
