"""A run's config file: strict YAML reading on top of a preset, ``--set`` overrides, every check, writing.

:func:`load_config` is the one way in: the YAML file (optional) on top of its ``preset:`` (:mod:`trainer.presets`),
then ``--set key=value`` overrides, then :func:`validate` (the fields' and LoRA's checks in
:class:`~trainer.config.TrainConfig`, the phase schedule's in :mod:`trainer.phases`).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig
from .config_checks import check_counters, check_numbers, read_yaml_mapping
from .phases import validate_phases
from .presets import preset_dict


def validate(cfg: TrainConfig, files: bool = True) -> TrainConfig:
    """Every check of a resolved config; raises :class:`ConfigError` naming the key. ``files=False``: all but the checks
    that the run's model files are named (``echomimic-train plan`` reads none)."""
    check_numbers(cfg)
    cfg.validate(files=files)
    check_counters(cfg)
    validate_phases(cfg.phases, cfg.data.condition)
    return cfg


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, path: str):
    """Check ``value`` against the annotation ``tp`` (after dataclass resolution) and return it converted."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            hint = f"; a list of one is written [{value}]" if isinstance(value, (str, int, float)) else ""
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}{hint}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}{_whole_hint(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {_type_name(tp)}")


def _whole_hint(value) -> str:
    """``'1e3'`` (YAML 1.1 reads an exponent without a dot as a string) or ``1000.0``: the whole number to write."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return f"; write it as a whole number: {int(number)}" if number.is_integer() and abs(number) < 1e15 else ""


# what other trainers' configs (diffusers' scripts, kohya) call a setting, at the top of the file
OTHER_NAMES = {"learning_rate": "optim.lr", "train_batch_size": "optim.batch_size",
               "gradient_accumulation_steps": "optim.grad_accum", "max_grad_norm": "optim.max_grad_norm",
               "lr_scheduler": "optim.lr_schedule", "lr_warmup_steps": "optim.warmup_steps",
               "checkpointing_steps": "checkpoint.every", "checkpoints_total_limit": "checkpoint.keep_last",
               "use_ema": "ema.enabled", "ema_decay": "ema.decay", "rank": "lora.rank", "network_dim": "lora.rank",
               "network_alpha": "lora.alpha"}
STEPS_NAMES = ("steps", "max_steps", "max_train_steps", "train_steps", "num_steps", "total_steps", "num_train_steps")


def _key_elsewhere(cls, key: str, path: str, exact: bool = False) -> str | None:
    """Where a top-level key unknown to the file belongs: a section's key of that (or a close) name (``lr`` ->
    ``optim.lr``), another trainer's name for one (``learning_rate``), or the phases' steps (``max_steps``)."""
    if path or not dataclasses.is_dataclass(cls):
        return None
    if key in STEPS_NAMES and "phases" in {f.name for f in dataclasses.fields(cls)}:
        return ("the run's length is the sum of its phases' steps: give each phase's steps (phases: [{name: stage1, "
                "steps: 1000}]), or with a preset's one phase --set phases.0.steps=1000")
    hints = typing.get_type_hints(cls)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}
    full = {f"{s}.{f.name}": f.name for s, tp in sections.items() for f in dataclasses.fields(tp)}
    if OTHER_NAMES.get(key) in full:
        return _in_section(OTHER_NAMES[key])
    exact_only, exact = exact, [k for k, name in full.items() if name == key]
    near = exact or ([] if exact_only else [k for k, name in full.items() if difflib.get_close_matches(key, [name], cutoff=0.85)])
    return _in_section(near[0]) if len(near) == 1 else None


def _in_section(full: str) -> str:
    section, name = full.split(".")
    return f"did you mean '{full}'? (written inside its section: '{section}:' then '  {name}: ...', or --set {full}=...)"


def from_dict(cls, data: dict, path: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        near = difflib.get_close_matches(str(k), names, n=1)
        elsewhere = _key_elsewhere(cls, str(k), path, exact=True) or (None if near else _key_elsewhere(cls, str(k), path))
        hint = (f"; {elsewhere}" if elsewhere else f"; did you mean '{near[0]}'?" if near
                else f"; known keys: {', '.join(names)}")
        raise ConfigError(f"{path + '.' if path else ''}{k}: unknown key{hint}")
    kwargs = {k: _coerce(v, hints[k], f"{path + '.' if path else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """Mappings merge recursively; lists and scalars in ``over`` replace those in ``base`` -- except a
    ``phases`` list whose every entry names an existing phase: those phases are updated in place (so a file
    can shorten ``phases: [{name: stage1, steps: 50}]`` without restating the preset's schedule)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif k == "phases" and _updates_by_name(out.get(k), v):
            by_name = {str(p["name"]): p for p in v}
            out[k] = [deep_merge(p, by_name[str(p.get("name"))]) if str(p.get("name")) in by_name else p for p in out[k]]
        else:
            out[k] = v
    return out


def _updates_by_name(base, over) -> bool:
    if not (isinstance(base, list) and isinstance(over, list) and over):
        return False
    names = {str(p.get("name")) for p in base if isinstance(p, dict)}
    return all(isinstance(p, dict) and "name" in p and str(p["name"]) in names for p in over)


def _parse_scalar(text: str):
    import yaml

    return yaml.safe_load(text)


def apply_override(data: dict, assignment: str) -> dict:
    """``a.b.c=value`` (YAML value). ``phases.<name>.field=value`` addresses a phase by name (or index)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    value = _parse_scalar(text)
    node = data
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            idx = next((j for j, ph in enumerate(node) if isinstance(ph, dict) and str(ph.get("name")) == p), None)
            if idx is None:
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"--set {key}: no phase named '{p}'")
                idx = int(p)
            node = node[idx]
        else:
            if p not in node or not isinstance(node[p], (dict, list)):
                node[p] = {} if p not in node or node[p] is None else node[p]
            node = node[p]
    node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, preset: str | None = None,
                files: bool = True) -> TrainConfig:
    """Load a YAML file (optional), on top of its ``preset:`` (or ``preset``), then apply ``--set`` overrides.
    ``files=False``: every check but that the model files are named -- ``echomimic-train plan`` reads the config this
    way (:func:`trainer.plan.load_plan_config`), so that it plans the run ``fit`` would make."""
    user: dict = read_yaml_mapping(path) if path is not None else {}
    name, overrides = choose_preset(user, overrides, preset)
    data = deep_merge(preset_dict(name), user) if name else dict(user)
    if name:
        data["preset"] = name
    data = json.loads(json.dumps(data))  # plain containers, so overrides can edit in place
    for ov in overrides or []:
        data = apply_override(data, ov)
    _check_lora_switch(data.get("lora"))
    return validate(from_dict(TrainConfig, data), files=files)


def choose_preset(user: dict, overrides: list[str] | None, preset: str | None) -> tuple[str | None, list[str]]:
    """The preset a run starts from, and the other overrides: ``--set preset=NAME`` chooses it in place of the file's
    ``preset:`` (it was applied after the preset's settings had been merged, so it only renamed the run's record),
    ``--preset NAME`` where the file has none; a ``--preset`` beside another preset in the file is refused (it was
    ignored without a word)."""
    rest, chosen = [], None
    for ov in overrides or []:
        if sets_preset(ov):
            chosen = _parse_scalar(ov.split("=", 1)[1])
            if chosen is not None and not isinstance(chosen, str):
                raise ConfigError(f"--set {ov}: a preset's name, e.g. --set preset=v1_stage2 (`echomimic-train presets`)")
        else:
            rest.append(ov)
    if chosen is not None:
        return chosen, rest
    theirs = user.get("preset")
    if preset and theirs not in (None, preset):
        raise ConfigError(f"--preset {preset}: the config file starts from another one (preset: {theirs}), and the file's "
                          f"preset is the one used; drop --preset, or choose another preset with --set preset={preset}")
    return (theirs if "preset" in user else preset), rest


def sets_preset(assignment: str) -> bool:
    """``--set preset=NAME``: it chooses the preset (:func:`choose_preset`), it is not applied as an override."""
    return "=" in assignment and assignment.split("=", 1)[0].strip() == "preset"


def _check_lora_switch(lora) -> None:
    """LoRA settings without ``enabled`` would silently train the whole UNets (several GB per checkpoint)."""
    if isinstance(lora, dict) and lora and "enabled" not in lora:
        keys = ", ".join(sorted(lora))
        raise ConfigError(f"lora: settings given ({keys}) but not lora.enabled, so this would be a full fine-tune of the "
                          "whole networks (checkpoints of several GB), not a LoRA run. Add 'enabled: true' to the lora "
                          "section (or --set lora.enabled=true); write 'enabled: false' to train the full model on purpose.")


def dump_config(cfg: TrainConfig, path: str | Path) -> Path:
    return write_run_config(cfg.to_dict(), path)


RUN_CONFIG_HEADER = "# echomimic-train: this run's resolved config, written at every start (export and --resume read it)\n"


def write_run_config(data: dict, path: str | Path) -> Path:
    """The run folder's ``config.yaml``. A file there that this function did not write (no header) and that reads as
    another config -- the user's own, e.g. given as ``--config`` -- is kept as ``config.user.yaml`` (or
    ``config.user-N.yaml``) first, with a warning, so that its comments and layout are not lost."""
    import logging
    import os

    import yaml

    path = Path(path)
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            same = yaml.safe_load(text) == data
        except yaml.YAMLError:
            same = False
        if not text.startswith(RUN_CONFIG_HEADER) and not same:
            keep, n = path.with_name(f"{path.stem}.user.yaml"), 0
            while os.path.lexists(keep):
                n += 1
                keep = path.with_name(f"{path.stem}.user-{n}.yaml")
            os.replace(path, keep)
            logging.getLogger(__name__).warning("%s was not written by echomimic-train; kept as %s (the run writes its "
                                                "resolved config as %s)", path, keep.name, path.name)
    from echomimic_lib.io.file_safety import write_text_atomic

    return write_text_atomic(path, RUN_CONFIG_HEADER + yaml.safe_dump(data, sort_keys=False))
