"""The GPU suite's plan (``bench/gpu_suite.py``): variants (``off`` / ``on`` plus ``+`` modifiers, described in the
suite's docstring) and ``version:variant`` plans, checked before any work."""
from __future__ import annotations

from dataclasses import dataclass

VERSIONS = {"v1": dict(size=512, cond=1, mode="v1-audio"), "v2": dict(size=768, cond=3, mode="v2-halfbody")}
ATTENTION_MODS = {"attn-flash": "sdpa-flash", "attn-cudnn": "sdpa-cudnn", "attn-efficient": "sdpa-efficient"}
MODIFIERS = ("graphs", "region-graphs", "cl", "cudnn", "vae", "vae-cl", "prof", *ATTENTION_MODS)
ALIASES = {"cuda-graphs": "region-graphs"}


@dataclass(frozen=True)
class Variant:
    name: str
    compile: bool
    graphs: bool = False
    region_graphs: bool = False
    channels_last: bool = False
    cudnn: bool = False
    vae: bool = False
    vae_cl: bool = False
    attention: str | None = None  # an attention backend of the denoiser (echomimic_lib.models.unet.attention)
    profile: bool = False

    @property
    def needs_cuda(self) -> bool:
        return self.graphs or self.region_graphs


def parse_variant(text: str) -> Variant:
    base, *mods = text.strip().split("+")
    mods = [ALIASES.get(m, m) for m in mods]
    if base not in ("off", "on"):
        raise ValueError(f"variant {text!r}: starts with off or on (e.g. on+graphs+cl)")
    bad = [m for m in mods if m not in MODIFIERS]
    if bad or len(set(mods)) != len(mods):
        raise ValueError(f"variant {text!r}: modifiers are {', '.join(MODIFIERS)}, each once (got {'+'.join(mods)})")
    if "region-graphs" in mods and (base != "on" or "graphs" in mods):
        raise ValueError(f"variant {text!r}: region-graphs needs on and excludes graphs (whole-denoiser graphs)")
    attention = [ATTENTION_MODS[m] for m in mods if m in ATTENTION_MODS]
    if len(attention) > 1:
        raise ValueError(f"variant {text!r}: one attention kernel at a time ({', '.join(ATTENTION_MODS)})")
    return Variant(text.strip(), base == "on", "graphs" in mods, "region-graphs" in mods, "cl" in mods, "cudnn" in mods,
                   "vae" in mods, "vae-cl" in mods, attention[0] if attention else None, "prof" in mods)


def parse_plan(text: str | None, versions: list[str], no_compile: bool, cuda_graphs: bool) -> list[tuple[str, Variant]]:
    if text:
        pairs = [p.split(":", 1) if ":" in p else (None, p) for p in text.split(",") if p.strip()]
    else:  # every version without compile first: those figures always come back
        names = ["off", "on"] + (["off+graphs", "on+graphs"] if cuda_graphs else [])
        pairs = [(v, n) for n in names if not (no_compile and n.startswith("on")) for v in versions]
    plan = []
    for v, name in pairs:
        if v not in VERSIONS:
            raise ValueError(f"plan entry {v}:{name}: the version is v1 or v2 (e.g. v1:on+graphs)")
        plan.append((v, parse_variant(name)))
    return plan
