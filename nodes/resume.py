"""The V1/V2 sampler nodes' ``resumable``: a long render that is cancelled, runs out of memory or whose server is
restarted goes on from its last kept step when the same prompt is queued again.

The state is the command line's (:mod:`echomimic_lib.pipeline.resume`: the clip's latents after a finished step,
written every 2 minutes, after the last step and when the render stops with an exception: Cancel, out of memory).
ComfyUI empties its temp folder when the server starts, so the state is kept under the output folder:
``<output>/echomimic/.resume/<fingerprint[:16]>.resume``; it is removed once the render is done, and states nobody
went on with for 7 days are removed when a resumable render starts.

The fingerprint (:func:`~echomimic_lib.jobs.resume_plan.request_digest`) covers what reaches the sampler: the
reference picture as the sampler reads it, the audio (features, waveform, fps), the mask / landmarks / poses payloads
(their tensors' bytes, :func:`~echomimic_lib.jobs.resume_plan.value_digest`), every sampler setting, the model set
(weight files by path, size and modification time, the VAE, each LoRA and its strength, dtype, fp8, attention,
weight set and variant, the device type) and the torch and pack versions. Left out as on the command line: the
loader's low_vram, compile and keep_loaded and the sampler's cuda_graphs (same output up to float rounding), so a
render that ran out of memory goes on with low_vram switched on.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.jobs.resume_plan import request_digest, value_digest
from ..echomimic_lib.pipeline.resume import StepCheckpoint, check_resumable, prune_states
from . import comfy_bridge as C
from .loader import KEY_FIELDS

log = logging.getLogger(__name__)

NOT_SHAPING = ("root", "device", "vae", "low_vram", "compile")  # root / vae: their files are hashed; device: its type
OPTION = "'resumable'"
FIX = "set 'deep_cache' to 0 for a resumable render (or switch 'resumable' off for DeepCache's speed)"


def check(deep_cache: int) -> None:
    """Before any work: DeepCache keeps features between steps that the state does not hold."""
    check_resumable(deep_cache, OPTION, FIX)


def state_folder() -> Path:
    return C.output_dir() / "echomimic" / ".resume"


def model_identity(handle) -> tuple[dict, dict]:
    """(what shapes the output, the weight files) of a loaded model set, from the loader's key (:data:`KEY_FIELDS`,
    then one ``("lora", path, strength)`` per EchoMimic LoRA)."""
    named = dict(zip(KEY_FIELDS, handle.key))
    fields = {k: v for k, v in named.items() if k not in NOT_SHAPING}
    fields.update(weights=handle.weights, variant=handle.variant, fp8=bool(handle.fp8))
    files = {k: str(v) for k, v in (getattr(handle.models, "files", None) or {}).items() if v is not None}
    if named.get("vae"):
        files["vae"] = named["vae"]
    loras = [e for e in handle.key[len(KEY_FIELDS):] if isinstance(e, tuple) and len(e) == 3 and e[0] == "lora"]
    for i, (_, path, _) in enumerate(loras):
        files[f"lora{i}"] = str(path)
    fields["lora_strengths"] = [float(e[2]) for e in loras]
    return fields, files


def checkpoint(handle, settings, inputs: dict) -> StepCheckpoint:
    """This render's kept state (``inputs``: name -> what reaches the sampler); old states are pruned first."""
    folder = state_folder()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EchoMimicError(f"'resumable' keeps the render's state in {folder}, which cannot be made a folder ({exc}): "
                             "move what is in the way, or switch 'resumable' off.") from exc
    prune_states(folder)
    fields, files = model_identity(handle)
    t0 = time.perf_counter()
    fields["inputs"] = {name: value_digest(value) for name, value in sorted(inputs.items())}
    key = request_digest(fields, settings, C.torch_device(), handle.models.dtype, files)
    path = folder / f"{key[:16]}.resume"
    log.info("resumable: the render's state is kept in %s (inputs hashed in %.2f s)", path, time.perf_counter() - t0)
    return StepCheckpoint(path, key)


def finished(state: StepCheckpoint | None, deferred: list | None = None) -> None:
    """The render is done: its state goes (or into ``deferred``, when the caller's output is not whole yet)."""
    if state is None:
        return
    if state.resumed_from is not None:
        log.info("resumable: went on after step %d from %s", state.resumed_from + 1, state.path)
    if deferred is not None:
        deferred.append(state)
    else:
        state.discard()
