"""``fit --resume``: the checkpoint must be of the run this config describes.

A checkpoint records the weight set it trained (``v1_audio`` / ``v1_pose`` / ``v2``) and, for a LoRA run, its adapter
settings (rank, alpha, targets, networks). A config of another run given with ``--resume`` (another preset, LoRA on or
off, another rank) was found out only after every network was built, by accelerate's load failing with hundreds of
tensor names, and by then the run folder's ``config.yaml`` had been replaced by the new config, so the earlier run's
record was gone. :func:`check_resume_matches` compares the two from ``meta.json`` before anything is written or built.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .config import ConfigError, TrainConfig

log = logging.getLogger("trainer")

_LORA_KEYS = ("rank", "alpha", "use_rslora", "targets", "networks")


def _lora_of(cfg: TrainConfig) -> dict:
    lc = cfg.lora
    return {"rank": lc.rank, "alpha": float(lc.alpha), "use_rslora": lc.use_rslora, "targets": list(lc.targets),
            "networks": list(lc.networks)}


def _kind(weights, lora) -> str:
    return f"{weights} " + (f"LoRA (rank {lora.get('rank')})" if lora else "full fine-tune")


def differences(cfg: TrainConfig, meta: dict) -> list[str]:
    """What ``cfg`` would train differently from the run that wrote ``meta`` (empty: the same run)."""
    out = []
    saved_weights, saved_lora = meta.get("weights"), meta.get("lora")
    if saved_lora and not isinstance(saved_lora, dict):
        raise _Damaged(f"lora {saved_lora!r} is not the adapter's settings")
    if saved_weights is not None and saved_weights != cfg.model.weights:
        out.append(f"model.weights {saved_weights} (this config: {cfg.model.weights})")
    if bool(saved_lora) != cfg.lora.enabled:
        out.append("lora.enabled " + ("true (this config: false)" if saved_lora else "false (this config: true)"))
    elif saved_lora:
        mine = _lora_of(cfg)
        for key in _LORA_KEYS:
            if key not in saved_lora:
                continue
            theirs = saved_lora[key]
            if key == "alpha":  # (an edited record: null, a text, a list is the damaged-record error below)
                if isinstance(theirs, bool) or not isinstance(theirs, (int, float)):
                    raise _Damaged(f"lora.alpha {theirs!r} is not a number")
                theirs = float(theirs)
            if theirs != mine[key]:
                out.append(f"lora.{key} {theirs} (this config: {mine[key]})")
    return out


class _Damaged(Exception):
    """meta.json's run settings are not as fit writes them (an edited or damaged record)."""


def damaged_record(ckpt, why: str, use: str = "Export") -> ConfigError:
    """The refusal of a checkpoint whose ``meta.json`` is not as the run wrote it (``why``: what is wrong), with what to
    do: ``use`` (``Export`` / ``Resume from``) an earlier checkpoint, or put the file back. Said by ``--resume``, by
    ``export`` and by ``v3-export``."""
    return ConfigError(f"{Path(ckpt) / 'meta.json'}: not a readable checkpoint record ({why}): the file was edited or "
                       f"damaged. {use} an earlier checkpoint of this run, or put back the meta.json the run wrote.")


def _another_run(cfg, ckpt: Path, what: str, diff: list[str], keeps: str, command: str) -> ConfigError:
    """The refusal of ``--resume`` with a checkpoint of another run (``what``: the two runs, ``diff``: its settings)."""
    run = Path(ckpt).parent.parent if Path(ckpt).parent.name == "checkpoints" else Path(cfg.output_dir)
    return ConfigError(
        f"{ckpt} is a checkpoint of another run{what}: it was trained with {'; '.join(diff)}. --resume continues a run "
        f"with its own {keeps}: resume it with the config it was trained with (`echomimic-train {command} --config "
        f"{run / 'config.yaml'} --resume`), or start this config in a new output_dir. Nothing was written.")


def check_resume_matches(cfg: TrainConfig, ckpt: Path, meta: dict) -> None:
    try:
        diff = differences(cfg, meta)
    except _Damaged as exc:  # (was a TypeError / ValueError traceback)
        raise damaged_record(ckpt, str(exc), "Resume from") from None
    if not diff:
        return
    what = (f" ({_kind(meta.get('weights'), meta.get('lora'))}) than this config's "
            f"({_kind(cfg.model.weights, _lora_of(cfg) if cfg.lora.enabled else None)})")
    raise _another_run(cfg, ckpt, what, diff, "settings", "fit")


def check_v3_resume_matches(cfg, ckpt: Path, meta: dict) -> None:
    """``v3-fit --resume``: the checkpoint's adapters are of this config's shape and scale (``lora.rank``, ``alpha``,
    ``targets``, as its ``meta.json`` records the run's config). Another rank or target list once failed in accelerate's
    load with a "size mismatch" traceback after every window was encoded and the run's config.yaml replaced; another
    alpha would have rescaled the trained adapters without a word. A checkpoint without the record is not compared."""
    saved = meta.get("config", {}).get("lora") if isinstance(meta.get("config"), dict) else None
    if not isinstance(saved, dict):
        return
    mine = {"rank": cfg.lora.rank, "alpha": float(cfg.lora.alpha), "targets": sorted(cfg.lora.targets)}
    diff = []
    for key, value in mine.items():
        if key not in saved:
            continue
        theirs = saved[key]
        if key == "alpha" and isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
            theirs = float(theirs)
        elif key == "targets" and isinstance(theirs, list):
            theirs = sorted(map(str, theirs))
        if theirs != value:
            diff.append(f"lora.{key} {theirs} (this config: {value})")
    if not diff:
        return
    raise _another_run(cfg, ckpt, " than this config's", diff, "adapters", "v3-fit")


def say_other_clips(ckpt: Path, before, now: dict) -> None:
    """``fit --resume`` on another clip set than the checkpoint's (``data.roots`` edited, clips added or prepared again)
    went on from the earlier set's data position without a word (``v3-fit`` says it). Said, with both counts; a
    checkpoint without the record (an older version's) is not compared."""
    if isinstance(before, dict) and before != now:
        log.warning("the clips changed since %s (%s then, %s now: data.roots edited, or clips added, removed or prepared "
                    "again): the resumed run draws from the new set, so it is not the run the checkpoint began",
                    Path(ckpt).name, before.get("count"), now["count"])


def say_fresh_resume(resume, ckpt, out_dir) -> None:
    """``--resume`` where the output folder has no checkpoint yet starts a fresh run (a restart script may always pass
    it); it once did so without a word, so a mistyped output_dir silently trained from step 0. Said, with the folder."""
    if resume and ckpt is None:
        log.warning("--resume: %s has no checkpoint yet, so this run starts from step 0 (a fresh run). If you meant to "
                    "continue an earlier run, stop this one and give that run's output_dir.", Path(out_dir).resolve())


def finished_message(ckpt: Path, out_dir, step: int, total: int, steps_key: str, key_steps: int, export: str) -> str | None:
    """``--resume`` of a run whose steps are all done (its checkpoint at or past the config's last step): what to do,
    said before anything is built or written (it once built every network, trained nothing and printed "finished at
    step N" as if it had trained). None while there are steps left. ``steps_key`` / ``key_steps``: the setting that
    lengthens the run (V1/V2: the last phase's steps; V3: ``steps``) and its value now."""
    if step < total:
        return None
    where = f" (of {total})" if step == total else f", past this config's {total} steps"
    return (f"the run in {out_dir} is already finished at step {step}{where}: nothing was trained. To train on, raise "
            f"{steps_key} above {key_steps + step - total} (--set {steps_key}=N) and --resume again; to use it: "
            f"`{export.format(ckpt=ckpt)}`.")
