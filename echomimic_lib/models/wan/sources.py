"""Where each part of the EchoMimicV3 flash-pro set comes from on Hugging Face, and what a folder still lacks.

Data and plain file checks only; the download itself is :func:`echomimic_lib.model_set.ensure_v3` (through
:mod:`echomimic_lib.io.hub`). How each source was checked: docs/v3.md, section *Files*.

Layout of ``<models>/v3-flash/`` (each folder holds the files of its source folder under the same names)::

    Wan2.1-Fun-V1.1-1.3B-InP/  config.json, diffusion_pytorch_model.safetensors, Wan2.1_VAE.pth
    echomimicv3-flash-pro/     diffusion_pytorch_model.safetensors
    chinese-wav2vec2-base/     config.json, preprocessor_config.json, pytorch_model.bin (or model.safetensors)
    umt5-xxl/                  text_encoder/* + tokenizer/* of a Wan Diffusers repository, side by side
    clip-vit-h-14/             image_encoder/* of a Wan 2.1 I2V Diffusers repository
    vae/                       optional diffusers AutoencoderKLWan folder, used when Wan2.1_VAE.pth is absent

The official release's own text encoder counts too: ``Wan2.1-Fun-V1.1-1.3B-InP/models_t5_umt5-xxl-enc-bf16.pth``
with its ``google/umt5-xxl/`` tokenizer (the official EchoMimicV3 README's layout) stands for ``umt5-xxl/``
(:mod:`.official_t5` maps its keys), so that folder is not downloaded again.

A part whose weights are sharded (``*.index.json``) needs every shard its index names; the shards' names are
known once the index is there, so a download fetches the index first and the shards in a second round.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ...io.file_names import plain_file_name
from ...io.json_file import read_json
from .official_t5 import OFFICIAL_T5, OFFICIAL_TOKENIZER

V3_FOLDER = "v3-flash"  # the set's folder inside the models folder
BASE = "Wan2.1-Fun-V1.1-1.3B-InP"
FLASH = "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"
UMT5_REPO = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"  # umT5-xxl in bf16 (the official encoder's precision), 11.4 GB
CLIP_REPO = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"


@dataclass(frozen=True)
class Source:
    name: str  # the part (also the key of the resolved files where it is one)
    folder: str  # local folder under v3-flash/
    repo: str  # Hugging Face repository
    remote: str  # folder inside the repository ("" = its top)
    need: tuple  # what makes the part complete: file names, each a name or a tuple of alternatives (one is enough)
    fetch: tuple  # what a download of an incomplete part gets (names as in the repository folder and locally)
    size: str  # for the log and the missing-files message
    what: str
    or_folder: str = ""  # also complete when this folder (under v3-flash/) holds a config.json
    or_file: str = ""  # also complete when this file (under v3-flash/) is there (the official release's own file)

    def remote_path(self, name: str) -> str:
        return f"{self.remote}/{name}" if self.remote else name


_W = "diffusion_pytorch_model.safetensors"
SOURCES: tuple[Source, ...] = (
    Source("base", BASE, "alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP", "", ("config.json", _W), ("config.json", _W),
           "3.1 GB", "base transformer Wan2.1-Fun-V1.1-1.3B-InP"),
    Source("vae", BASE, "alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP", "", ("Wan2.1_VAE.pth",), ("Wan2.1_VAE.pth",),
           "508 MB", "Wan 2.1 VAE", or_folder="vae"),
    Source("flash", "echomimicv3-flash-pro", "BadToBest/EchoMimicV3", "echomimicv3-flash-pro", (_W,), (_W,),
           "3.7 GB", "EchoMimicV3 flash-pro transformer"),
    Source("wav2vec2", "chinese-wav2vec2-base", "TencentGameMate/chinese-wav2vec2-base", "",
           ("config.json", "preprocessor_config.json", ("model.safetensors", "pytorch_model.bin")),
           ("config.json", "preprocessor_config.json", "pytorch_model.bin"), "380 MB", "chinese-wav2vec2-base audio encoder"),
    Source("umt5", "umt5-xxl", UMT5_REPO, "text_encoder", ("config.json", ("model.safetensors", "model.safetensors.index.json")),
           ("config.json", "model.safetensors.index.json"), "11.4 GB", "umT5-xxl text encoder (bf16, sharded)",
           or_file=f"{BASE}/{OFFICIAL_T5}"),
    Source("tokenizer", "umt5-xxl", UMT5_REPO, "tokenizer", ("tokenizer_config.json", ("tokenizer.json", "spiece.model")),
           ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "spiece.model"), "21 MB", "umT5 tokenizer",
           or_file=f"{BASE}/{OFFICIAL_TOKENIZER}/tokenizer_config.json"),
    Source("clip", "clip-vit-h-14", CLIP_REPO, "image_encoder", ("config.json", ("model.safetensors", "pytorch_model.bin")),
           ("config.json", "model.safetensors"), "1.3 GB", "CLIP ViT-H/14 image encoder"),
)


@dataclass(frozen=True)
class Missing:
    source: Source
    files: tuple[str, ...]  # names to fetch into the part's folder
    shards_unknown: bool  # the weight index is among them: its shards come once it is there


def _alts(entry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def shards(index: Path) -> list[str]:
    """The weight files a ``*.index.json`` names (raises ValueError for an unreadable index)."""
    fix = "delete it and download again"
    doc = read_json(index, "not a readable weight index", fix, ValueError, max_bytes=64 << 20, expect=dict)
    names = doc.get("weight_map")
    if not isinstance(names, dict) or not all(plain_file_name(n) for n in names.values()):
        raise ValueError(f"{index}: not a readable weight index (no 'weight_map' of tensor names to file names in its "
                         f"folder); {fix}")
    return sorted(set(names.values()))


def part_missing(src: Source, folder: Path, every: bool = False) -> Missing | None:
    """What ``folder`` (the v3-flash folder) lacks of ``src``; None when the part is complete. ``every``: an incomplete
    part lists all its files, also those that are there (a forced download replaces them)."""
    if src.or_folder and (folder / src.or_folder / "config.json").is_file():
        return None
    if src.or_file and (folder / src.or_file).is_file():
        return None
    d = folder / src.folder

    @functools.lru_cache(maxsize=None)  # one look per name: files appearing meanwhile (another worker fetching the
    def have(name: str) -> bool:         # same set) cannot leave an incomplete part with nothing listed to fetch
        return (d / name).is_file()

    needed = [n for e in src.need for n in _alts(e)]
    index = next((n for n in needed if n.endswith(".index.json") and have(n)), None)
    listed = shards(d / index) if index else []
    if all(any(have(a) for a in _alts(e)) for e in src.need) and all(have(s) for s in listed):
        return None
    # an alternative whose sibling is there is not fetched (model.safetensors present: no pytorch_model.bin)
    covered = {n for e in src.need if not isinstance(e, str) and any(have(a) for a in e) for n in e}
    files = [n for n in src.fetch if (every or not have(n)) and n not in covered] + [s for s in listed if every or not have(s)]
    return Missing(src, tuple(files), any(n.endswith(".index.json") for n in files))


# the parts the ComfyUI nodes read: the text and image encoders and the VAE are core's (Load CLIP / CLIP Vision / VAE)
COMFY_PARTS = ("base", "flash", "wav2vec2")


def missing_parts(folder: Path, every: bool = False, parts: tuple[str, ...] | None = None) -> list[Missing]:
    """What ``folder`` lacks of every part (of ``parts`` only, when given: names of :data:`SOURCES`)."""
    srcs = [s for s in SOURCES if parts is None or s.name in parts]
    return [m for m in (part_missing(s, Path(folder), every) for s in srcs) if m is not None]


def resolved_files(folder: Path) -> dict:
    """The paths the V3 loaders take (call once :func:`missing_parts` is empty)."""
    folder = Path(folder)
    pth = folder / BASE / "Wan2.1_VAE.pth"
    umt5 = folder / "umt5-xxl"
    if not (umt5 / "config.json").is_file() and (folder / BASE / OFFICIAL_T5).is_file():
        umt5 = folder / BASE / OFFICIAL_T5  # the official encoder file (its tokenizer: google/umt5-xxl/ beside it)
    return {"base": folder / BASE, "flash": folder / FLASH, "wav2vec2": folder / "chinese-wav2vec2-base",
            "umt5": umt5, "clip": folder / "clip-vit-h-14", "vae": pth if pth.is_file() else folder / "vae"}
