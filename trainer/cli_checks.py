"""The trainer command line's checks before a run (:mod:`trainer.cli`): the config file given is this command's (a
V3 LoRA config is not given to ``fit``, nor a V1/V2 one to ``v3-fit``), the run's output folder is a folder of its own,
and why a ``prepare`` run kept no clip, with the fix for each reason."""
from __future__ import annotations

import os


# what to do about each drop reason when a prepare run keeps nothing
DROP_FIXES = {
    "no_audio": "put a same-name audio file beside each silent video (clip.mp4 + clip.wav), or use videos with sound",
    "too_short": "use longer clips or lower --min-seconds",
    "no_face": "use videos where one face (half-body: one person) is visible in most frames, or raise --max-missing-face",
    "multiple_faces": "use videos with one person, or raise --max-multi-face",
    "face_too_small": "use closer shots or lower --min-face-px",
    "scene_cut": "cut the videos at their scene changes first, or raise --scene-threshold",
    "unreadable": "check that the files play (ffprobe) and are not truncated",
}


def no_clips_message(summary: dict, input_dir) -> str:
    if summary["clips"] == 0:
        from .data.video import VIDEO_SUFFIXES

        return f"no videos found under {input_dir} (looked for {', '.join(VIDEO_SUFFIXES)}, recursively)"
    parts = [f"{n} {reason}: {DROP_FIXES.get(reason, 'see report.jsonl')}" for reason, n in sorted(summary["dropped"].items())]
    return f"no clip was kept (of {summary['clips']}); " + "; ".join(parts)


def check_config_file(path, overrides, command: str, preset=None) -> None:
    """Before the config is read as ``command``'s: a config is given, the file holds keys, and they are this trainer's
    (an EchoMimicV3 LoRA config given to ``fit``, or a V1/V2 one to ``v3-fit``, was refused with a message about one
    of its keys: a LoRA switch, an unknown ``preset``)."""
    from pathlib import Path

    from .config import ConfigError
    from .plan.v3 import _present, family_keys, read_plan_mapping

    example = ("docs/training.md section 0 has a complete small one; `echomimic-train presets` lists the presets a config "
               "may start from" if command == "fit" else "docs/training.md section 11 has one")
    if path is None:
        if preset or overrides:
            return
        raise ConfigError(f"{command} needs --config RUN.yaml ({example})")
    if Path(path).is_dir():
        raise ConfigError(f"--config {path}: a folder; give the run's YAML file ({example})")
    family, data, v3_keys = read_plan_mapping(path, overrides)
    if not data:
        raise ConfigError(f"{path}: the config file is empty; write the run's settings into it ({example})")
    if command == "fit" and family == "v3":
        raise ConfigError(f"{path}: an EchoMimicV3 LoRA config (it has {', '.join(v3_keys[:3])}); train it with "
                          f"`echomimic-train v3-fit --config {path}` (fit trains V1/V2)")
    v12_keys = sorted(family_keys()[1] & _present(data), key=lambda k: (k.count("."), k))  # top-level keys first
    if command == "v3-fit" and v12_keys:
        raise ConfigError(f"{path}: a V1/V2 config (it has {', '.join(v12_keys[:3])}); train it with "
                          f"`echomimic-train fit --config {path}` (v3-fit trains EchoMimicV3 LoRAs)")


def check_output_dir(out) -> None:
    """A run's output_dir is a folder of its own: not a file (was ``File exists`` after the datasets were read), nor a
    prepared dataset (the run's checkpoints, logs and config were written among its clips)."""
    from pathlib import Path

    from .config import ConfigError

    try:  # (a YAML "\0" or "\ud800": a raw ValueError where the run first used the folder)
        os.fsencode(str(out))
        if "\x00" in str(out):
            raise ValueError("a NUL byte")
    except ValueError:
        raise ConfigError(f"output_dir {str(out)!r}: a name no folder can have (a NUL byte, or half of a surrogate pair "
                          "such as \\ud800); write the folder's name again (e.g. runs/my_run)") from None
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise ConfigError(f"output_dir {out}: {p} is a file, not a folder; give a folder for the run "
                                  "(e.g. runs/my_run; it is created)")
            break
    if (out / "prepare_config.json").is_file() or (out / "manifest.jsonl").is_file() and (out / "status").is_dir():
        raise ConfigError(f"output_dir {out} is a prepared dataset (manifest.jsonl, prepare_config.json): the run's "
                          "checkpoints, logs and config would be written among its clips; give a folder of its own "
                          "(e.g. runs/my_run) and keep the dataset in data.roots")
