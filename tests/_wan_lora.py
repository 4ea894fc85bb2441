"""One random Wan LoRA for the tiny V3 network, written in every layout the reader takes (tests of V3 LoRAs).

The low-rank pairs use alpha = 2 * rank, so the layouts without alpha (diffusers, bare Wan names) carry the scale folded
into the up matrix (x 2 is exact in float32): every layout gives the same deltas bit for bit."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from echomimic_lib.lora.wan_files import diffusers_name

RANK = 4
LOW_RANK = ["blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.1.cross_attn.k_img", "blocks.0.ffn.0", "blocks.1.ffn.2",
            "time_projection.1", "text_embedding.0", "img_emb.proj.1", "head.head", "blocks.0.cross_attn.k_audio"]
DIFFS = ["blocks.0.norm3.weight", "blocks.0.cross_attn.norm_k.weight", "blocks.1.modulation"]  # full weight deltas (.diff)
BIASES = ["blocks.0.self_attn.q.bias", "blocks.0.norm3.bias", "time_projection.1.bias"]  # full bias deltas (.diff_b)
LAYOUTS = ("comfyui", "lightx2v", "bare", "model_prefix", "kohya", "videox_fun", "diffusers", "peft")


def make_parts(model, seed: int = 0, gain: float = 0.05) -> dict:
    """{"A": {path: down}, "B": {path: up}, "diff": {param: delta}, "diff_b": {param: delta}} for ``model``'s shapes."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    parts = {"A": {}, "B": {}, "diff": {}, "diff_b": {}}
    for path in LOW_RANK:
        out, inp = params[path + ".weight"].shape
        parts["A"][path] = torch.randn(RANK, inp, generator=g)
        parts["B"][path] = torch.randn(out, RANK, generator=g) * gain
    for p in DIFFS:
        parts["diff"][p] = torch.randn(params[p].shape, generator=g) * gain
    for p in BIASES:
        parts["diff_b"][p] = torch.randn(params[p].shape, generator=g) * gain
    return parts


def expected_deltas(parts: dict) -> dict[str, torch.Tensor]:
    """Parameter name -> the delta every layout must give (alpha / rank = 2)."""
    out = {f"{p}.weight": (parts["B"][p] @ parts["A"][p]) * 2.0 for p in LOW_RANK}
    out.update(parts["diff"])
    out.update(parts["diff_b"])
    return out


def _owner(param: str) -> tuple[str, str]:
    """(path, suffix) of a full delta: ``x.weight`` -> (x, .diff), ``x.bias`` -> (x, .diff_b), a bare parameter -> (x, .diff)."""
    if param.endswith(".weight"):
        return param[: -len(".weight")], ".diff"
    if param.endswith(".bias"):
        return param[: -len(".bias")], ".diff_b"
    return param, ".diff"


def layout_tensors(parts: dict, layout: str) -> dict[str, torch.Tensor]:
    alpha = torch.tensor(2.0 * RANK)
    name = {"comfyui": lambda p: "diffusion_model." + p, "lightx2v": lambda p: "diffusion_model." + p, "bare": lambda p: p,
            "model_prefix": lambda p: "model.diffusion_model." + p, "kohya": lambda p: "lora_unet_" + p.replace(".", "_"),
            "videox_fun": lambda p: "lora_unet__" + p.replace(".", "_"),
            "diffusers": lambda p: "transformer." + diffusers_name(p + ".weight")[: -len(".weight")],
            "peft": lambda p: "base_model.model." + diffusers_name(p + ".weight")[: -len(".weight")]}[layout]
    down, up = (".lora_A.weight", ".lora_B.weight") if layout in ("comfyui", "diffusers", "peft") else (".lora_down.weight", ".lora_up.weight")
    with_alpha = layout not in ("bare", "diffusers", "peft")
    out = {}
    for p in LOW_RANK:
        out[name(p) + down] = parts["A"][p]
        out[name(p) + up] = parts["B"][p] if with_alpha else parts["B"][p] * 2.0
        if with_alpha:
            out[name(p) + ".alpha"] = alpha
    for param, t in {**parts["diff"], **parts["diff_b"]}.items():
        path, suffix = _owner(param)
        if layout in ("diffusers", "peft") and suffix == ".diff_b" and path in LOW_RANK:
            out[name(path) + ".lora_B.bias"] = t  # diffusers' lora_bias (scale 1: no alpha)
        else:
            out[name(path) + suffix] = t
    return out


def write_layout(parts: dict, layout: str, dest: Path) -> Path:
    save_file({k: v.contiguous().clone() for k, v in layout_tensors(parts, layout).items()}, str(dest))
    return dest
