"""Community Wan2.1 LoRA files for EchoMimicV3 flash-pro (Wan2.1-Fun 1.3B InP + audio layers): read, map, check.

A file is read once (:func:`read_wan_lora`: safetensors only, pairs complete, finite values; no network needed),
then its names are mapped onto the network's own parameter names and checked against their shapes
(:func:`resolve_wan_lora`, from a ``name -> shape`` table: a loaded network's, or the weight files' headers).
Layouts read (the facts come from ComfyUI's ``comfy/lora.py`` / ``comfy/lora_convert.py`` and diffusers'
Wan LoRA conversion and single-file key renames):

- Wan names, with or without ``diffusion_model.`` / ``model.diffusion_model.`` / ``model.`` in front (ComfyUI,
  diffusion-pipe, lightx2v, converted musubi): ``<path>.lora_A.weight`` / ``.lora_B.weight`` or ``.lora_down.weight`` /
  ``.lora_up.weight``, optional ``<path>.alpha``;
- kohya / musubi-tuner: ``lora_unet_<path with _ for .>`` (VideoX-Fun: ``lora_unet__``), inverted through the
  network's own names (module names hold underscores, so the map is built, not parsed);
- diffusers / peft: ``transformer.`` or ``base_model.model.`` + diffusers names (``blocks.0.attn1.to_q``,
  ``attn2.add_k_proj``, ``ffn.net.0.proj``, ``condition_embedder.time_proj``, ``proj_out``, ``norm2`` = Wan ``norm3``,
  ...), mapped back; ``<path>.lora_B.bias`` is a bias delta (scaled like the layer);
- full deltas: ``<path>.diff`` (the weight, or the parameter ``<path>`` itself, e.g. ``blocks.0.modulation``) and
  ``<path>.diff_b`` (the bias), as lightx2v-style files carry for norms, biases and embeddings.

The delta of a low-rank pair is ``alpha / rank * up @ down`` (alpha = rank when absent, as kohya and ComfyUI).
Every key must map and every shape fit; otherwise :class:`~echomimic_lib.errors.WeightsError` says how many keys,
one example and the likely cause (another Wan size, a text-encoder LoRA, LyCORIS, ...). The result,
:class:`WanLora`, is keyed by parameter name (``blocks.0.self_attn.q.weight``, ``blocks.0.norm3.bias``) and gives
the same ``delta`` as the EchoMimic adapters, so :class:`~.apply.LoraPatch` merges it (stochastic rounding, exact
restore) and :func:`~.apply.patched_weight` patches it through ComfyUI's ModelPatcher.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from ..io.os_errors import not_file_text
from .files import FORMAT, check_scale, check_strength, training_output

log = logging.getLogger(__name__)

# (suffix, part): the longest first; A = down, B = up
SUFFIXES = ((".lora_down.weight", "A"), (".lora_up.weight", "B"), (".lora_A.weight", "A"), (".lora_B.weight", "B"),
            (".lora_B.bias", "B_bias"), (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"))
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.", "model.")
KOHYA = ("lora_unet__", "lora_unet_")  # VideoX-Fun's double underscore first (ComfyUI's convert_lora_wan_fun)
# diffusers' single-file renames of the Wan transformer (applied in order to a full parameter name)
DIFFUSERS_RENAMES = (
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"), ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"), ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"), ("cross_attn", "attn2"), ("self_attn", "attn1"),
    (".o.", ".to_out.0."), (".q.", ".to_q."), (".k.", ".to_k."), (".v.", ".to_v."), (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."), (".norm_k_img.", ".norm_added_k."), ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"), ("modulation", "scale_shift_table"), ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"), ("norm3", "norm2"), ("norm__placeholder", "norm3"),
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"), ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2"), ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"))
KNOWN_DIMS = {5120: "Wan 14B (width 5120)", 1536: "Wan2.1 1.3B (width 1536)", 3072: "Wan2.2 5B (width 3072)"}


def diffusers_name(wan_param: str) -> str:
    for old, new in DIFFUSERS_RENAMES:
        wan_param = wan_param.replace(old, new)
    return wan_param


def _targets(shapes: dict) -> set[str]:
    """The names a LoRA key may address: module paths (parameter names less ``.weight`` / ``.bias``) and parameters."""
    out = set(shapes)
    out.update(k.rsplit(".", 1)[0] for k in shapes if k.endswith((".weight", ".bias")))
    return out


def _diffusers_map(shapes: dict) -> dict[str, str]:
    """diffusers target name -> Wan target name, for every parameter (and its module) of the network."""
    out = {}
    for k in shapes:
        out[diffusers_name(k)] = k
        for end in (".weight", ".bias"):
            if k.endswith(end):
                out[diffusers_name(k)[: -len(end)]] = k[: -len(end)]
    return out


@dataclass
class WanLoraFile:
    """A checked file before mapping: ``groups[name][part]`` with the name as written (prefix removed)."""
    path: Path
    groups: dict[str, dict[str, torch.Tensor]]
    keys: dict[str, str]  # group name -> one original key (for messages)
    kohya: set[str] = field(default_factory=set)  # group names written kohya-style (without the lora_unet_ prefix)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class WanLora:
    """A Wan LoRA mapped onto a network: per parameter name a low-rank pair and/or a full delta."""
    path: Path
    layout: str  # wan | kohya | diffusers
    low_rank: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # param -> (down r x ..., up out x r ..., alpha / rank)
    diffs: dict[str, torch.Tensor]  # param -> full delta (already scaled)
    shapes: dict[str, tuple]
    skipped: list[str] = field(default_factory=list)  # keys left out: a text-to-video input layer (see resolve_wan_lora)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def keys(self) -> list[str]:
        return sorted(set(self.low_rank) | set(self.diffs))

    @property
    def rank(self) -> int:
        return max((int(a.shape[0]) for a, _, _ in self.low_rank.values()), default=0)

    def delta(self, key: str, strength: float = 1.0, device=None) -> torch.Tensor:
        """``strength * (alpha / rank * up @ down + diff)`` of one parameter, float32, in the parameter's shape."""
        shape = self.shapes[key]
        out = torch.zeros(shape, dtype=torch.float32, device=device)
        if key in self.low_rank:
            a, b, scale = self.low_rank[key]
            a = a.to(device, torch.float32).reshape(a.shape[0], -1)
            b = b.to(device, torch.float32).reshape(b.shape[0], -1)
            out += (b @ a).reshape(shape) * scale
        if key in self.diffs:
            out += self.diffs[key].to(device, torch.float32)
        return out * float(strength)

    def patch_tensors(self, key: str) -> list[torch.Tensor]:
        """The file's tensors behind one parameter's patch (ComfyUI's weight adapter ``weights``)."""
        out = list(self.low_rank[key][1::-1]) if key in self.low_rank else []
        return out + ([self.diffs[key]] if key in self.diffs else [])


def _split(key: str) -> tuple[str, str]:
    for suffix, part in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return key, ""


def read_wan_lora(path: str | Path) -> WanLoraFile:
    """Read a Wan LoRA ``.safetensors`` and check its structure (pairs, ranks, alphas, finite values)."""
    from safetensors import safe_open

    path = Path(path)
    if training_output(path, "echomimic-train v3-export"):
        raise WeightsError(training_output(path, "echomimic-train v3-export"))
    if problem := not_file_text(path, "LoRA file not found"):
        raise WeightsError(f"{path}: {problem}; pass an existing Wan2.1 1.3B LoRA .safetensors (ComfyUI: models/loras/).")
    if path.suffix != ".safetensors":
        raise WeightsError(f"{path}: Wan LoRAs are read from .safetensors files only (pickled .pt/.ckpt/.bin files can run code); "
                           "convert it to safetensors first.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable safetensors file ({exc}); it may be truncated. Download it again.") from exc
    if meta.get("format") == FORMAT:
        raise WeightsError(f"{path}: an EchoMimic V1/V2 adapter (weights {meta.get('weights', '?')}), not a Wan LoRA. EchoMimicV3 "
                           "flash-pro takes LoRAs trained on Wan2.1 1.3B (image-to-video / Fun-InP); use this one with --version v1/v2.")
    if not tensors:
        raise WeightsError(f"{path}: the LoRA file holds no tensors.")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    keys: dict[str, str] = {}
    kohya: set[str] = set()
    unknown, original = [], {}
    for key, t in tensors.items():
        name, part = _split(key)
        if not part:
            unknown.append(key)
            continue
        for p in KOHYA:
            if name.startswith(p):
                name = name[len(p):]
                kohya.add(name)
                break
        else:
            for p in PREFIXES:
                if name.startswith(p):
                    name = name[len(p):]
                    break
        if part in groups.setdefault(name, {}):
            raise WeightsError(f"{path}: '{key}' repeats '{keys[name]}' (the same layer written twice); the file is damaged.")
        groups[name][part] = t
        keys.setdefault(name, key)
        original[name, part] = key
    if unknown:
        raise WeightsError(f"{path}: {len(unknown)} tensor(s) of a kind this reader does not know, e.g. '{unknown[0]}'. {_cause(unknown)}")
    for name, g in groups.items():
        where = f"{path}: '{keys[name]}'"
        if ("A" in g) != ("B" in g):
            where = f"{path}: '{original[name, 'A' if 'A' in g else 'B']}'"
            raise WeightsError(f"{where} lacks its {'up (lora_B / lora_up)' if 'A' in g else 'down (lora_A / lora_down)'} matrix; "
                               "the file is incomplete. Download it again.")
        if "alpha" in g and "A" not in g:
            raise WeightsError(f"{where}: an alpha without its LoRA matrices; the file is damaged.")
        if "A" in g:
            a, b = g["A"], g["B"]
            if a.dim() < 2 or b.dim() < 2 or a.shape[0] != b.shape[1]:
                raise WeightsError(f"{where}: down {tuple(a.shape)} and up {tuple(b.shape)} do not share a rank; the file is damaged.")
        if "alpha" in g:
            t = g["alpha"]
            if t.numel() != 1 or not (math.isfinite(float(t.reshape(-1)[0])) and float(t.reshape(-1)[0]) > 0):
                raise WeightsError(f"{where}: alpha must be one positive number, got shape {tuple(t.shape)}.")
            check_scale(where, float(t.reshape(-1)[0]), g["A"].shape[0], float(t.reshape(-1)[0]) / g["A"].shape[0],
                        "a damaged or wrongly made file: use another (kohya / ComfyUI LoRAs have alpha <= rank, or a few times it)")
        if not all(bool(torch.isfinite(t).all()) for t in g.values()):
            raise WeightsError(f"{where} contains NaN/Inf (saved from a diverged run?). Use another checkpoint.")
    return WanLoraFile(path, groups, keys, kohya)


def _cause(keys: list[str]) -> str:
    text = " ".join(keys[:50]).lower()
    if "lora_te" in text or "text_encoder" in text or "t5" in text or "clip" in text:
        return "The file adapts a text or image encoder too; only the transformer's layers can be applied (use a transformer-only LoRA)."
    if any(s in text for s in ("hada_", "lokr_", "dora_scale", "set_weight", "lora_mid", ".oft_", "w_norm")):
        return "LyCORIS / LoHa / LoKr / DoRA / OFT weights are not supported: use a plain LoRA (lora_A/B or lora_down/up)."
    blocks = [int(m.group(1)) for k in keys if (m := re.search(r"blocks[._](\d+)[._]", k))]
    if blocks and max(blocks) >= 30:
        return (f"The file has block {max(blocks)}: it was made for a Wan model with more blocks (Wan 14B has 40, "
                "Wan2.1 1.3B 30); use a LoRA trained on Wan2.1 1.3B.")
    return ("Not a Wan2.1 transformer LoRA in a layout this reader knows (ComfyUI/diffusion-pipe, lightx2v, kohya/musubi, "
            "diffusers/peft; see docs/v3.md), or one for another model family.")


def _size_error(lora: WanLoraFile, key: str, got: tuple, param: str, want: tuple) -> WeightsError:
    hint = next((KNOWN_DIMS[d] for d in got if d in KNOWN_DIMS and d not in want), None)
    made = f"it was made for {hint}" if hint else "it was made for another Wan size or variant (e.g. text-to-video: 16 input channels)"
    return WeightsError(f"LoRA '{lora.name}': '{key}' needs {got} but the network's '{param}' is {want}: {made}. EchoMimicV3 "
                        "flash-pro is Wan2.1-Fun 1.3B image-to-video (width 1536, 30 blocks, 36 input channels); use a LoRA trained on it.")


def _t2v_input(param: str, got: tuple, want: tuple) -> bool:
    """A text-to-video LoRA's input-layer delta: ``patch_embedding`` with fewer input channels (16 noise-latent ones)
    than the image-to-video network (36: noise, mask, condition), the rest of its shape the same."""
    return (param == "patch_embedding.weight" and len(got) == len(want) and got[0] == want[0] and got[2:] == want[2:]
            and got[1] < want[1])


def resolve_wan_lora(lora: WanLoraFile, shapes: dict[str, tuple]) -> WanLora:
    """Map every group of ``lora`` onto a parameter of ``shapes`` (name -> shape); strict (see the module doc), except
    that a text-to-video LoRA's input-layer delta is left out with a warning, as ComfyUI does (its other layers fit)."""
    shapes = {k: tuple(v) for k, v in shapes.items()}
    targets = _targets(shapes)
    dmap = _diffusers_map(shapes)
    kohya_map = {t.replace(".", "_"): t for t in targets}
    plain = [n for n in lora.groups if n not in lora.kohya]
    wan_only, diff_only = targets - set(dmap), set(dmap) - targets
    use_diffusers = sum(n in diff_only for n in plain) > sum(n in wan_only for n in plain)
    layout = "diffusers" if use_diffusers else ("kohya" if lora.kohya and not plain else "wan")
    low_rank, diffs, missing, misfit, skipped = {}, {}, [], None, []

    def param(target: str, ends: tuple[str, ...]) -> str | None:
        return next((target + e for e in ends if target + e in shapes), None)

    for name, g in lora.groups.items():
        target = kohya_map.get(name) if name in lora.kohya else (dmap.get(name) if use_diffusers else (name if name in targets else None))
        if target is None:
            missing.append(lora.keys[name])
            continue
        scale = 1.0
        if "A" in g:
            p = param(target, (".weight",))
            a, b = g["A"], g["B"]
            scale = float(g["alpha"].reshape(-1)[0]) / a.shape[0] if "alpha" in g else 1.0
            if p is None:
                missing.append(lora.keys[name])
                continue
            want = shapes[p]
            flat_in = math.prod(a.shape[1:])
            if b.shape[0] != want[0] or flat_in != math.prod(want[1:]) or math.prod(b.shape[2:]) != 1:
                if _t2v_input(p, (b.shape[0], *a.shape[1:]), want):
                    skipped.append(lora.keys[name])
                    continue
                misfit = misfit or (lora.keys[name], (b.shape[0], *a.shape[1:]), p, want)
            low_rank[p] = (a, b, scale)
        for part, ends, k_scale in (("diff", (".weight", ""), 1.0), ("diff_b", (".bias",), 1.0), ("B_bias", (".bias",), scale)):
            if part not in g:
                continue
            p = param(target, ends)
            if p is None:
                missing.append(lora.keys[name])
                continue
            t = g[part]
            if tuple(t.shape) != shapes[p]:
                if _t2v_input(p, tuple(t.shape), shapes[p]):
                    skipped.append(lora.keys[name])
                    continue
                misfit = misfit or (lora.keys[name], tuple(t.shape), p, shapes[p])
            prev = diffs.get(p)
            d = t.float() * k_scale
            diffs[p] = d if prev is None else prev + d
    if misfit:
        raise _size_error(lora, *misfit)
    if missing:
        raise WeightsError(f"LoRA '{lora.name}': {len(missing)} of {len(lora.groups)} layer(s) match no parameter of the EchoMimicV3 "
                           f"network, e.g. '{missing[0]}'. {_cause(missing)}")
    if skipped and not (low_rank or diffs):
        raise WeightsError(f"LoRA '{lora.name}' holds only a text-to-video input layer ('{skipped[0]}'), which does not fit "
                           "the image-to-video network (36 input channels): nothing in it applies to EchoMimicV3 flash-pro.")
    if skipped:
        log.warning("LoRA '%s': %s left out: a text-to-video input layer (16 input channels; the network has 36), as ComfyUI "
                    "does; its other %d layer(s) apply.", lora.name, ", ".join(skipped), len(set(low_rank) | set(diffs)))
    return WanLora(lora.path, layout, low_rank, diffs, {k: shapes[k] for k in set(low_rank) | set(diffs)}, skipped)


def shapes_of(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


def load_wan_lora(path: str | Path, shapes: dict[str, tuple], strength: float = 1.0) -> WanLora:
    """Read, map and check a Wan LoRA against ``shapes`` and refuse a bad strength -- no network touched."""
    check_strength(strength)
    return resolve_wan_lora(read_wan_lora(path), shapes)


def wan_parameters(lora: WanLora, model: nn.Module) -> dict[str, nn.Parameter]:
    """The network's parameters the LoRA changes; refuses a network it does not fit (names or shapes)."""
    params = dict(model.named_parameters())
    for key in lora.keys:
        if key not in params or tuple(params[key].shape) != tuple(lora.shapes[key]):
            got = tuple(params[key].shape) if key in params else "absent"
            raise WeightsError(f"LoRA '{lora.name}': '{key}' is {got} in this network, {tuple(lora.shapes[key])} in the LoRA's mapping: "
                               "it was mapped for another network; read it again for this one.")
    return {key: params[key] for key in lora.keys}


def apply_wan_lora(model: nn.Module, lora: str | Path | WanLora, strength: float = 1.0, keep_base: bool = True):
    """Merge a Wan LoRA into an EchoMimicV3 transformer in place; returns the :class:`~.apply.LoraPatch`
    (``remove()`` restores the base exactly when ``keep_base``). Strength 0 leaves every weight untouched."""
    from .apply import LoraPatch

    strength = check_strength(strength)
    if not isinstance(lora, WanLora):
        lora = load_wan_lora(lora, shapes_of(model), strength)
    patch = LoraPatch(lora, wan_parameters(lora, model), keep_base=keep_base)
    patch.set_strength(strength)
    log.info("Wan LoRA %s (%s layout) applied at strength %s: %d parameters, rank %d", lora.name, lora.layout, strength,
             len(lora.keys), lora.rank)
    return patch
