"""EchoMimicV3 flash-pro rows of a batch manifest (``version`` = ``v3-flash``): the columns, the up-front checks and
the render, through :mod:`echomimic_lib.jobs.v3_plan` (``plan_v3``) and :mod:`echomimic_lib.jobs.animate_v3` (``load_v3`` /
``render_v3``).

Columns are the options of ``echomimic animate --version v3-flash``: ``reference``, ``audio``, ``prompt``, ``steps``,
``audio-cfg``, ``seed``, ``width``, ``height``, ``length``, ``long-mode``, ``teacache``, ``no-color-transfer``, ``compile``, ``fp8``, ``vae-tiling``,
``resumable`` (a long clip keeps its finished chunks: a retried row goes on from them; never hashed), ``models``
(the models folder; the set is read from ``<models>/v3-flash``), ``dtype``, ``smoke``, ``lora``, ``lora-strength`` (a
Wan2.1 1.3B LoRA, or several separated by ``;`` with one strength or one each), plus ``name`` and ``kind``
(``animate``). A V1/V2 column (``pose``, ``mode``, ``acc``, ``cfg``, ...) is a manifest error.

* Weights: an ``offline`` row whose set lacks files is an error row up front (the missing files listed, no worker
  touches it); otherwise the worker fetches what is missing (:mod:`echomimic_lib.io.hub`, each call staged in its own
  folder, so workers fetching one folder at once do not collide) before loading.
* Rows with the same models folder, dtype, LoRAs (files and strengths, in order), ``compile`` and ``fp8`` share one loaded set in a worker
  (transformer, VAE, wav2vec2, CLIP-vision). umT5 is never kept: the runner gives each row the distinct prompts of the
  batch's V3 rows on its folder (:func:`share_prompts`), and the first row a worker renders encodes those missing from
  the on-disk prompt cache with one umT5 load, writes them there and frees it before the set loads; with a warm cache
  umT5 never loads.
* Records as the V1/V2 rows', with ``frames_sha256`` (the frames hashed as they stream to the writer, long clips
  chunk by chunk) and ``prompts_encoded`` (how many prompts the row encoded: 0 when all were cached).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from ...modes import V3_LONG_MODES

VERSION = "v3-flash"


def is_v3(job) -> bool:
    """Whether a batch job is an EchoMimicV3 flash-pro row (its request a :class:`V3Row`)."""
    return getattr(job.request, "version", None) == VERSION
SMOKE = {"width": 64, "steps": 2}  # as `animate --version v3-flash --smoke` (its length: v3_plan.SMOKE_LENGTH)


@dataclass
class V3Row:
    """A V3 row's request: the command line's values; device and dtype are resolved in the worker."""
    reference: str
    audio: str
    output: str
    models: str | None = None  # the models folder (as --models): the set is <models>/v3-flash (smoke: <models>/tiny-v3)
    prompt: str = "A person is speaking."
    steps: int | None = None
    audio_cfg: float = 3.0
    seed: int = 43
    width: int | None = None
    height: int | None = None
    length: int | None = None
    teacache: str = "official"
    long_mode: str = "reanchor"
    color_transfer: bool = True
    smoke: bool = False
    dtype: str = "auto"
    device: str = "auto"
    download: bool = True
    compile: bool = False  # regional torch.compile of the transformer blocks (its own loaded set: see plan_v3_row)
    version: str = VERSION
    lora: str | tuple[str, ...] | None = None  # a Wan2.1 1.3B LoRA (as --lora), or several; rows with LoRAs load their own set
    lora_strength: float | tuple[float, ...] = 1.0
    resumable: bool = False  # as --resumable: how the row is rendered, not what (results.NOT_HASHED)
    fp8: bool = False  # as --fp8: the blocks' weights in fp8 (a loaded set of its own)
    vae_tiling: bool = False  # as --vae-tiling (set per row on the shared loaded VAE)

    @property
    def folder(self) -> Path:
        from ..models_folder import default_models_dir

        root = Path(self.models).expanduser() if self.models else default_models_dir()
        return root / ("tiny-v3" if self.smoke else "v3-flash")

    def request(self, device, dtype):
        from ..v3_plan import V3Request

        w = self.width or (SMOKE["width"] if self.smoke else 768)
        h = self.height or w
        return V3Request(reference=self.reference, audio=self.audio, output=self.output, models=str(self.folder),
                         prompt=self.prompt, steps=self.steps or (SMOKE["steps"] if self.smoke else 8),
                         audio_cfg=self.audio_cfg, seed=self.seed, size=(w, h),
                         length=self.length or 0, smoke=self.smoke, teacache=self.teacache,
                         long_mode=self.long_mode,
                         color_transfer=self.color_transfer, device=str(device), dtype=dtype,
                         download=self.download and not self.smoke, lora=self.lora, lora_strength=self.lora_strength,
                         compile=self.compile, resumable=self.resumable, fp8=self.fp8,
                         vae_tiling=self.vae_tiling)


ALIASES = {"no_color_transfer": ("color_transfer", True), "offline": ("download", True)}
PATHS = ("reference", "audio", "models")  # lora: .lora_columns (one file or several)


def build_v3_kwargs(values: dict, base: Path, convert) -> dict:
    """Row values (keys normalised, ``kind``/``name``/``version`` removed) -> V3Row fields; ValueError names the column."""
    from .lora_columns import lora_columns
    from .manifest_text import not_a_file, row_path

    annotations = {f.name: str(f.type) for f in fields(V3Row)}
    own = set(annotations) - {"output", "device", "download", "version", "color_transfer"}
    kw = lora_columns(values, base)  # one Wan LoRA or several (';'), strengths once or one each
    for key, value in values.items():
        target, inverted = ALIASES.get(key, (key, False))
        if target not in own and key not in ALIASES:
            known = sorted((own | set(ALIASES)) - {"offline"}) + ["kind", "name", "version"]
            raise ValueError(f"column '{key}' is not an EchoMimicV3 flash-pro option (a V1/V2 one, or unknown); "
                             f"drop it for this row or use version v1/v2; V3 columns: {', '.join(known)}")
        converted = convert(value, annotations[target], key)
        kw[target] = (not converted) if inverted else converted
    if kw.get("teacache") not in (None, "official", "off"):
        raise ValueError(f"teacache: '{kw['teacache']}'; use official or off")
    if kw.get("long_mode") not in (None, *V3_LONG_MODES):
        raise ValueError(f"long-mode: '{kw['long_mode']}'; use {' or '.join(V3_LONG_MODES)}")
    for key in ("reference", "audio"):
        if not kw.get(key):
            raise ValueError(f"{key}: missing; every {VERSION} row needs one")
    for key in PATHS:
        if kw.get(key):
            kw[key] = row_path(kw[key], base, key)
            problem = not_a_file(kw[key]) if key != "models" else None
            if problem:
                raise ValueError(f"{key}: {kw[key]} {problem}")
    return kw


def plan_v3_row(job) -> tuple[tuple, int]:
    """The row's checks (no weights; without download: the set's files must be there): (weight key, frames)."""
    import torch

    from ..animate_v3 import model_files
    from ..v3_plan import plan_v3

    row = job.request
    req = row.request("cpu", torch.float32)
    req.compile = False  # its only check is a CPU warning: the worker's, on the row's own device
    plan = plan_v3(req)
    if not row.download and not row.smoke:
        model_files(row.folder, download=False)  # offline: missing files are this row's error, before any load
    from .lora_columns import v3_lora_key

    lora = v3_lora_key(row)  # merged at load: a set of its own (every file and strength, in order)
    compiled = ("compiled",) if row.compile else ()  # compiled blocks are another set to keep; the key stays without
    fp8 = ("fp8",) if row.fp8 else ()  # so are fp8 weights
    return (VERSION, str(row.folder), row.dtype) + lora + compiled + fp8, int(plan.frames)


def prepare_smoke(jobs) -> None:
    from ...models.wan.tiny import ensure_tiny_v3

    for folder in sorted({str(j.request.folder) for j in jobs if j.request.smoke}):
        ensure_tiny_v3(folder)


def share_prompts(jobs) -> None:
    """Give each V3 job (:attr:`Job.prompts`) every distinct prompt of ``jobs``' V3 rows on its models folder (the
    prompt cache's folder), so the worker that meets the first missing one encodes them all in one umT5 load."""
    by_folder: dict[str, dict] = {}
    for job in jobs:
        if is_v3(job):
            by_folder.setdefault(str(job.request.folder), {})[job.request.prompt] = None
    for job in jobs:
        if is_v3(job):
            job.prompts = tuple(by_folder[str(job.request.folder)])


def render_v3_job(job, cache, progress=None) -> dict:
    """The row's render in a worker: the prompts missing from the prompt cache (its own and :attr:`Job.prompts`)
    encoded with one umT5 load that is freed at once; the set loaded once (``cache``); the frames hashed as they
    stream to the writer (``frames_sha256``, as the V1/V2 rows)."""
    import hashlib

    from ...audio.wav2vec import FPS
    from ...devices import resolve_device, resolve_dtype, resolve_vae_dtype
    from ...io.video_writer import _as_uint8
    from ..animate_v3 import encode_prompts, load_v3, model_files, ready_models, render_v3
    from ..v3_plan import plan_v3

    row = job.request
    device = resolve_device(row.device)
    dtype = resolve_dtype(row.dtype, device)
    req = replace(row.request(device, dtype), vae_dtype=resolve_vae_dtype(row.dtype, device, dtype, "wan"))
    plan = plan_v3(req)
    files = model_files(Path(req.models), download=req.download)  # missing files fetched first (unless offline)
    if cache.key != job.weight_key:  # as the single command: the old set goes, umT5 comes and goes, then the networks
        cache.clear()
    encoded = encode_prompts(files["umt5"], [row.prompt, *job.prompts], Path(req.models) / "prompt_cache", device, dtype)
    models = cache.get(job.weight_key, lambda: ready_models(load_v3(files, device, dtype, vae_dtype=req.vae_dtype), plan))
    digest = hashlib.sha256()
    out = render_v3(plan, models, progress, on_frames=lambda block: digest.update(_as_uint8(block).tobytes()))
    return {"output": out["output"], "frames": out["frames"], "fps": FPS, "device": str(device), "size": out["size"],
            "frames_sha256": digest.hexdigest(), "prompts_encoded": len(encoded)}
