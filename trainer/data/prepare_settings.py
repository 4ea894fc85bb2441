"""The settings a prepared dataset was made with (``prepare_config.json``), and the check that a resumed run
uses the same ones: options as given, and the whisper, face landmarker and DWPose models by their content (file
names and one sha256), so the same model under another path is the same and another model is refused."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from .clean import PrepareConfig


def _option(key: str) -> str:
    if key.startswith("curate."):
        return f"--curate {key.split('.', 1)[1]}"
    if key == "dwpose":
        return "--dwpose-dir"
    return f"--{key.replace('_', '-')}" if key in OPTION_FIELDS else key


# PrepareConfig fields that are options of `echomimic-train prepare` (the others are named as they are)
OPTION_FIELDS = {"kind", "fps", "size", "min_seconds", "max_seconds", "max_missing_face", "max_multi_face", "min_face_px",
                 "scene_threshold", "shards", "jpeg_quality", "whisper", "mediapipe_model"}
MODEL_FIELDS = ("whisper", "mediapipe_model", "dwpose")  # recorded by content (whisper_identity), not by path


def whisper_identity(*paths) -> dict | None:
    """What ``prepare_config.json`` records of a model (``--whisper``; also the landmarker's and DWPose's files, see
    :func:`model_identities`; None: not given): the files' names and one content digest, so the same model under
    another path (another worker's machine) is the same, and another model is not."""
    import hashlib

    if not paths or any(p is None for p in paths):
        return None
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return {"file": "+".join(Path(p).name for p in paths), "sha256": digest.hexdigest()}


def model_identities(cfg: PrepareConfig, landmarker_model, pose_detector) -> dict:
    """The face landmarker and DWPose files a run's landmarks and poses come from (None: not used, or not found yet:
    then not compared), so a re-run with another model is refused like another ``--whisper``."""
    out = {"mediapipe_model": None, "dwpose": None}
    if cfg.kind == "headshot" or cfg.face_landmarks and cfg.kind == "halfbody":
        from echomimic_lib.errors import EchoMimicError
        from echomimic_lib.landmarks.mp_models import resolve_model

        try:
            out["mediapipe_model"] = whisper_identity(resolve_model("face_landmarker", landmarker_model))
        except (EchoMimicError, OSError):
            pass  # not found: the run stops on it with its own message
    if pose_detector is not None and getattr(pose_detector, "det_path", None) is not None:
        out["dwpose"] = whisper_identity(pose_detector.det_path, pose_detector.pose_path)
    return out


def _said(key: str, value) -> str:
    if value is None:
        return f"{_option(key)} (not given)"
    if key in MODEL_FIELDS and isinstance(value, dict):  # (an edited file's other value: said as it is)
        return f"{_option(key)} {value.get('file')} (sha256 {str(value.get('sha256'))[:12]})"
    return f"{_option(key)} {value}"


def check_same_settings(out_root: Path, cfg: PrepareConfig, whisper: dict | None = None, models: dict | None = None) -> None:
    """A dataset prepared before (its ``prepare_config.json``) is resumed only with the settings it was prepared with:
    its clips are skipped as done, so other settings (``--kind``, ``--size``, ``--fps``, a threshold, another
    ``--whisper`` model or none: :func:`whisper_identity`; another landmarker or DWPose model, where both runs' are
    known: ``models``, :func:`model_identities`) would leave a folder of clips of two kinds, sizes or audio
    features under a config that describes only the newest run's."""
    import json

    from echomimic_lib.io.json_file import read_json

    from ..config import ConfigError

    conf = out_root / "prepare_config.json"
    if not conf.is_file():
        return
    unknown = "this folder's earlier settings are unknown, so prepare into a new folder"
    before = read_json(conf, "unreadable", unknown, ConfigError, expect=dict)
    if not isinstance(before.get("curate") or {}, dict):
        raise ConfigError(f"{conf}: unreadable (not the settings object `echomimic-train prepare` writes); {unknown}")
    now = json.loads(json.dumps({**asdict(cfg), "whisper": whisper, **(models or {})}))

    def flat(d):
        out = {k: v for k, v in d.items() if k != "curate"}
        out.update({f"curate.{k}": v for k, v in (d.get("curate") or {}).items() if k != "device"})
        return {("shards" if k == "num_shards" else k): v for k, v in out.items()}

    old, new = flat(before), flat(now)
    def key(k, v):  # a model by its content (its path may differ)
        return (v or {}).get("sha256") if k in MODEL_FIELDS and isinstance(v, dict) else v

    def known(k):  # a landmarker / DWPose model not used or not found by one of the runs is not compared
        return k == "whisper" or k not in MODEL_FIELDS or old[k] is not None and new[k] is not None

    differ = [k for k in new if k in old and known(k) and key(k, old[k]) != key(k, new[k])]
    if differ:
        said, asked = (", ".join(_said(k, side[k]) for k in differ) for side in (old, new))
        raise ConfigError(f"{out_root} was prepared with {said} (its prepare_config.json); this run asks for {asked}. "
                          "Its clips would be skipped as done and mixed with clips of the new settings. Prepare into a new "
                          "folder, or give the dataset's own settings to go on with it.")
