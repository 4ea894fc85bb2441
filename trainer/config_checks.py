"""Checks of a training config that come before anything is built: the YAML file itself (readable text, valid
YAML, a mapping) and every number in the config (finite; the optimizer's within range)."""
from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path

from echomimic_lib.io.yaml_file import expanded_size_over

from .config import ConfigError


MAX_CONFIG_BYTES = 16 << 20  # a config is a few KB (a captions table inline, a few MB)
MAX_CONFIG_VALUES = 1_000_000  # values the config holds once its aliases are expanded (the copies made of it expand them)


_expanded_size_over = expanded_size_over  # shared with the doctor's read of extra_model_paths.yaml (echomimic_lib.io)


def read_yaml_mapping(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file, or a :class:`ConfigError` that says what is wrong with it."""
    import yaml

    path = Path(path)
    if path.is_file() and (size := path.stat().st_size) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes is not a training config (at most {MAX_CONFIG_BYTES >> 20} MiB; one is a few "
                          "KB); give the .yaml config file (see `echomimic-train presets`).")
    if path.exists() and not (path.is_file() or path.is_dir() or path.is_fifo()):  # /dev/zero: endless; a socket
        raise ConfigError(f"{path}: a device or socket, not a config file; give the .yaml config file (see "
                          "`echomimic-train presets`).")
    with open(path, "rb") as fh:  # (a pipe, --config <(...), is read as any reader would: at most the limit)
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES >> 20} MiB is not a training config (one is a few KB); give the "
                          ".yaml config file (see `echomimic-train presets`).")
    if b"\x00" in raw[:4096]:
        raise ConfigError(f"{path}: this is a binary file, not a YAML config; give the .yaml file (see `echomimic-train presets`).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 YAML.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{at} ({problem}); fix the file (indentation, a missing ':' or quote).") from None
    if data is None:
        return {}
    if _expanded_size_over(data, MAX_CONFIG_VALUES):
        raise ConfigError(f"{path}: its YAML aliases (*name) expand to more than {MAX_CONFIG_VALUES} values (aliases of lists "
                          "of aliases: a 'billion laughs' file), which copying the config would spell out in memory; write "
                          "the values out, or alias only small sections.")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys (e.g. `preset: v1_stage1`), "
                          f"not a {type(data).__name__}")
    twice = _written_twice(yaml.compose(text, Loader=yaml.SafeLoader))
    if twice:
        key, first, second = twice
        raise ConfigError(f"{path}: '{key}' is written twice (lines {first} and {second}); YAML keeps only the last, so "
                          "what the first one says would be dropped without a word. Write it once (one section with all "
                          "its settings).")
    return data


def _written_twice(root) -> tuple[str, int, int] | None:
    """The first key written twice in one mapping of the YAML node tree (its dotted path and both lines), or None.
    Keys that ``<<: *alias`` merges in may be overridden (that is what a merge is for); each node is visited once
    (aliases share nodes)."""
    import yaml

    seen_nodes, todo = set(), [(root, "")]
    while todo:
        node, where = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                name = f"{where}.{k.value}" if where else str(k.value)
                if isinstance(k, yaml.ScalarNode):
                    if (k.tag, k.value) in lines:
                        return name, lines[(k.tag, k.value)], k.start_mark.line + 1
                    lines[(k.tag, k.value)] = k.start_mark.line + 1
                todo.append((v, name))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, f"{where}[{i}]") for i, v in enumerate(node.value))
    return None


def _numbers(obj, path: str = ""):
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _numbers(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, float):
        yield path, obj


def check_finite(cfg) -> None:
    """Every float of the config (V1/V2's or V3's) is finite."""
    for path, value in _numbers(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{path}: {value} is not a finite number; give a plain number (e.g. optim.lr: 1e-5).")


def check_lr(lr: float, usual: str = "EchoMimic trains at 1e-5") -> None:
    if not 0.0 < lr <= 1.0:
        raise ConfigError(f"optim.lr: {lr} is out of range; a learning rate is above 0 and at most 1 ({usual}).")


def check_numbers(cfg) -> None:
    """Every float of the config is finite; the optimizer's settings are in their ranges."""
    check_finite(cfg)
    seed = getattr(getattr(cfg, "validation", None), "seed", 0)  # the sampler's range (else refused at the first render)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ConfigError(f"validation.seed: {seed!r} must be a whole number from 0 to 2^64-1 (e.g. validation.seed: 420).")
    o = cfg.optim
    check_lr(o.lr)
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas: {o.betas} must be two numbers in [0, 1), e.g. [0.9, 0.999].")
    for name in ("weight_decay", "eps", "max_grad_norm"):
        if getattr(o, name) < 0:
            raise ConfigError(f"optim.{name}: {getattr(o, name)} must not be negative.")
    if o.eps == 0:  # AdamW divides by sqrt(v) + eps: a parameter whose gradient is 0 (a LoRA's A at the start) became NaN
        raise ConfigError("optim.eps: 0 makes AdamW divide 0 by 0 for every weight whose gradient is 0 (a new LoRA's A "
                          "matrices at the first step), and those weights become NaN; give a small positive number, "
                          "e.g. optim.eps: 1e-8.")


def check_keep_last(keep_last: int, steps: int, every: int) -> None:
    """``checkpoint.keep_last``: the newest N checkpoints are kept, so N must be at least 1 (0 or a negative number once
    kept every checkpoint without a word). To keep them all: the run's number of checkpoints, said in the message."""
    if keep_last < 1:
        every_one = max(1, math.ceil(steps / max(1, every)))
        raise ConfigError(f"checkpoint.keep_last: {keep_last} must be at least 1 (the newest N checkpoints are kept, e.g. "
                          f"checkpoint.keep_last: 3); to keep every checkpoint of this run, checkpoint.keep_last: {every_one} "
                          f"({steps} steps: a checkpoint every {every} and at the last step).")


def check_validation_sampler(v) -> None:
    """The validation video's sampler settings (``validation.steps`` / ``cfg`` / ``frames``) in the ranges the sampler
    takes: they were first used at the first validation render, ``validation.every`` steps into the run, which then
    stopped with the sampler's "steps must be at least 1." naming no key."""
    from echomimic_lib.modes import MAX_STEPS

    if not 1 <= v.steps <= MAX_STEPS:
        raise ConfigError(f"validation.steps: {v.steps} must be 1..{MAX_STEPS} denoising steps (e.g. validation.steps: 10).")
    if not 0.0 <= v.cfg <= 20.0:
        raise ConfigError(f"validation.cfg: {v.cfg} must be a guidance scale from 0 to 20 (e.g. validation.cfg: 2.5).")
    if v.frames < 1:
        raise ConfigError(f"validation.frames: {v.frames} must be at least 1 (frames of the validation video, e.g. 12).")


def check_counters(cfg) -> None:
    """The loop's intervals, the data loader's workers, the EMA decay and the LR schedule's name: each is said with its
    key and a working value before anything is built (they once stopped the run after its first step with a bare
    ZeroDivisionError, or with torch's / diffusers' ValueError once the networks were built)."""
    every = (("checkpoint.every", cfg.checkpoint.every, "1000"), ("log.every", cfg.log.every, "10"))
    for path, value, example in every:
        if value < 1:
            raise ConfigError(f"{path}: {value} must be at least 1 (steps between two; e.g. {path}: {example}).")
    check_keep_last(cfg.checkpoint.keep_last, cfg.max_steps, cfg.checkpoint.every)
    if cfg.validation.every < 0:
        raise ConfigError(f"validation.every: {cfg.validation.every} must be 0 (no validation video) or a number of steps.")
    if cfg.validation.every:
        check_validation_sampler(cfg.validation)
    if cfg.data.num_workers < 0:
        raise ConfigError(f"data.num_workers: {cfg.data.num_workers} must be 0 (load in the training process) or more.")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps: {cfg.optim.warmup_steps} must be 0 (no warm-up) or more.")
    if cfg.ema.enabled and not 0.0 <= cfg.ema.decay < 1.0:
        raise ConfigError(f"ema.decay: {cfg.ema.decay} must be in [0, 1) (e.g. 0.9999).")
    from diffusers.optimization import SchedulerType

    names = [s.value for s in SchedulerType]
    if cfg.optim.lr_schedule not in names:
        close = difflib.get_close_matches(str(cfg.optim.lr_schedule), names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"optim.lr_schedule: '{cfg.optim.lr_schedule}' is not a schedule; {hint}choose one of {', '.join(names)}.")
