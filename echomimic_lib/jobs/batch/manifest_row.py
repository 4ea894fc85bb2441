"""One row of a batch manifest -> a :class:`Job` (:func:`build_job`): what each column means, checked as the row is read
(reading the files, and gathering every row's problem: :mod:`.manifest`).

Columns are the single commands' long options (``reference``, ``audio``, ``pose``, ``landmarks``, ``lora``,
``seed``, ``width``, ``steps``, ``version``, ``mode``, ``acc``, ``no-face-crop``, ...; ``-`` or ``_`` alike; a row
with ``version`` = ``v3-flash`` takes the options of ``animate --version v3-flash`` instead: :mod:`.v3`; ``lora``
may stack several files separated by ``;``, ``lora-strength`` one value or one per file: :mod:`.lora_columns`) plus:

- ``kind``: ``animate`` (default) or ``dub`` (default when the row has a ``video``);
- ``name``: the output's name, ``OUTDIR/<name>.mp4`` (default ``<reference or video stem>__<audio stem>``,
  with ``-<line>`` added to a name that repeats). A stable name is how a rerun finds a finished row.

Relative paths are read from the manifest's folder; ``--models`` / ``--set`` paths from the current one
(:func:`defaults_from_cwd`).
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, fields
from pathlib import Path

from ...errors import EchoMimicError
from ...io.file_names import safe_file_name
from ..lora_args import SEPARATOR, split_cell
from ..pose_sources import AUTO_POSE
from .lora_columns import lora_columns
from .manifest_text import not_a_file, row_path
from .results import INPUT_FIELDS
from .v3 import VERSION as V3  # EchoMimicV3 flash-pro rows: columns and checks in .v3

MODES = {"audio": "v1-audio", "landmarks": "v1-landmarks", "audio+landmarks": "v1-audio+landmarks", "halfbody": "v2-halfbody"}
VERSION_MODE = {"v1": "audio", "v2": "halfbody"}
ALIASES = {"no_face_crop": ("face_crop", True), "offline": ("download", True), "mask": ("region", False),
           "color_match": ("color", False)}  # command-line name -> (request field, inverted switch)
NOT_PER_ROW = {"output": "rows are written to OUTDIR/<name>.mp4; use the 'name' column",
               "device": "the batch places each worker on its device; use `echomimic batch --device`",
               "download": "use `echomimic batch --offline`"}
PATH_FIELDS = {"animate": ("reference", "audio", "landmarks", "pose", "mediapipe_model", "models"),  # lora: .lora_columns
               "dub": ("video", "audio", "mediapipe_model", "models")}
CWD_PATHS = {*PATH_FIELDS["animate"], *PATH_FIELDS["dub"], "lora"}  # --models / --set values: from the current folder


@dataclass
class Job:
    line: int                 # line of the manifest (1-based; the header is line 1 of a CSV), or the pair's number
    name: str                 # output stem: OUTDIR/<name>.mp4, the row's key in results.jsonl
    kind: str                 # animate | dub
    request: object           # AnimateRequest | DubRequest, output set
    weight_key: tuple = ()    # jobs with the same key share loaded models
    fingerprint: str = ""     # inputs + settings (results.fingerprint)
    error: str | None = None  # found by the job's checks: the row becomes an error row without running
    frames: int = 0           # expected frames (progress and frames/s)
    attempts: int = 0
    retrying: bool = False    # its worker died and it goes back to the queue (set before the ``died`` event)
    prompts: tuple = ()       # V3 rows: the batch's distinct prompts on the same models folder (batch.v3.share_prompts)
    given: str = ""           # the 'name' cell as written, when it differs from ``name`` (said when two rows collide)
    downloads: tuple = ()     # a dry run: what this row's checks would download (file, from, to), none fetched

    @property
    def output(self) -> Path:
        return Path(self.request.output)


def _request_types():
    from ..animate import AnimateRequest
    from ..dub import DubRequest

    return {"animate": AnimateRequest, "dub": DubRequest}


def _key(name: str) -> str:
    return str(name).strip().lstrip("-").replace("-", "_").lower()


def column_field(name: str) -> str:
    """The request field a column sets (``no-face-crop`` and ``face_crop`` are one)."""
    return ALIASES.get(_key(name), (_key(name),))[0]


def given_values(values: dict) -> dict:
    """A row's (or the ``--set`` defaults') values that are given, under their normalised keys: an empty cell, a
    blank string or a JSON null means "not given", whichever spelling (``-`` or ``_``) the column has."""
    return {_key(k): v for k, v in values.items()
            if k is not None and v is not None and not (isinstance(v, str) and v.strip() == "")}


def with_defaults(defaults: dict | None, row: dict, loose=(), kept: set | None = None) -> dict:
    """``defaults`` for every row, a value the row gives itself winning (cleaned first, so an empty cell never
    overrides a default, in either spelling of the column). ``loose``: the ``--set`` keys, given only to the rows whose
    kind has that column (``--set mask=hull`` to the dub rows of a manifest with animate rows too; ``--set prompt=``
    to its EchoMimicV3 rows); ``kept`` collects those some row took."""
    own, values = given_values(row), {**given_values(defaults or {}), **given_values(row)}
    columns = _columns_of(values)
    for key in map(_key, loose):
        if key in values and key not in own and columns is not None and column_field(key) not in columns:
            del values[key]
        elif kept is not None and key in values:
            kept.add(key)
    return values


def _columns_of(values: dict) -> set | None:
    """The request fields a row of this kind and version has (None: a kind that is not known; the row says so)."""
    from .v3 import V3Row

    kind = str(values.get("kind", "dub" if "video" in values else "animate")).strip().lower()
    if str(values.get("version", "")).strip().lower() == V3:
        return {f.name for f in fields(V3Row)} - {"color_transfer"} | {"kind", "name", "version"}
    types = _request_types()
    return None if kind not in types else {f.name for f in fields(types[kind])} | {"kind", "name", "version", "mode"}


def _convert(value, annotation: str, column: str):
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    base = annotation.split("|")[0].strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("1", "true", "yes", "y", "on"):
            return True
        if text in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError(f"{column}: '{value}' is not a switch; use true or false")
    if base in ("int", "float"):
        if base == "int" and isinstance(value, str) and re.fullmatch(r"[+-]?[\d.]+[eE][+-]?\d+", value):
            raise ValueError(f"{column}: '{value}' is a whole number in scientific notation, as a spreadsheet shows a long "
                             "number, rounded; format the column as Text (or Number, 0 decimals) and export it again")
        try:
            number = float(value)
            if base == "int":
                if number != int(number):
                    raise ValueError
                return int(number)
            return number
        except OverflowError:  # inf, or a JSON number beyond a float (1e400): no whole number
            raise ValueError(f"{column}: '{value}' is not a whole number") from None
        except (TypeError, ValueError):
            hint = (f"; write decimals with a point: {value.replace(',', '.')}" if isinstance(value, str)
                    and re.fullmatch(r"[+-]?\d*,\d+", value) else "")  # a decimal comma (European spreadsheets)
            raise ValueError(f"{column}: '{value}' is not a{'' if base == 'float' else ' whole'} number{hint}") from None
    return str(value)


def _mode_name(version, mode) -> str:
    if mode in MODES.values():
        return mode
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode: unknown mode '{mode}'; choose one of {', '.join(MODES)}")
    if version is not None and version not in VERSION_MODE:
        raise ValueError(f"version: unknown version '{version}'; choose v1, v2 or {V3}")
    name = MODES[mode or VERSION_MODE[version or "v1"]]
    if version is not None and not name.startswith(version):
        raise ValueError(f"mode '{mode}' belongs to EchoMimic {name[:2].upper()}, not {version.upper()}")
    return name


def _given_name(name) -> str:
    return "" if name is None else unicodedata.normalize("NFC", str(name))


def build_job(values: dict, line: int, base: Path, outdir: Path) -> Job:
    """One row -> a :class:`Job` (raises ValueError naming the column on a row that cannot be understood)."""
    values = given_values(values)
    for key, why in NOT_PER_ROW.items():
        if key in values:
            raise ValueError(f"column '{key}' is not allowed: {why}")
    kind = str(values.pop("kind", "dub" if "video" in values else "animate")).strip().lower()
    types = _request_types()
    if kind not in types:
        raise ValueError(f"kind: unknown kind '{kind}'; use animate or dub")
    if str(values.get("version", "")).strip().lower() == V3:
        return _v3_job(values, kind, line, base, outdir)
    cls = types[kind]
    annotations = {f.name: str(f.type) for f in fields(cls)}
    name = values.pop("name", None)
    version, mode = (None if v is None else str(v).strip().lower() for v in (values.pop("version", None), values.pop("mode", None)))
    kw = {}
    if kind == "animate":
        kw["mode"] = _mode_name(version, mode)
        kw.update(lora_columns(values, base))  # one file or several (';'), strengths once or one each
    elif version not in (None, "v1") or mode is not None:
        raise ValueError("dub always uses the V1 audio + landmark weights: leave out version and mode")
    for key, value in values.items():
        target, inverted = ALIASES.get(key, (key, False))
        if target not in annotations or target in ("output", "mode"):
            aliases = {k for k, (t, _) in ALIASES.items() if t in annotations}
            known = sorted((set(annotations) | aliases) - {"output", "mode", "device", "download"}) + ["kind", "name", "version", "mode"]
            import difflib

            close = difflib.get_close_matches(key.replace("-", "_"), [k.replace("-", "_") for k in known], 1, 0.75)
            meant = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown column '{key}' for {kind}{meant}; known: {', '.join(known)}")
        converted = _convert(value, annotations[target], key)
        kw[target] = (not converted) if inverted else converted
    main_input = "video" if kind == "dub" else "reference"
    if not kw.get(main_input):
        raise ValueError(f"{main_input}: missing; every {kind} row needs one")
    for key in PATH_FIELDS[kind]:
        if kw.get(key) and not (key == "pose" and kw[key] == AUTO_POSE):  # pose auto: gestures from the speech, no file
            kw[key] = row_path(kw[key], base, key)
            problem = not_a_file(kw[key]) if key in INPUT_FIELDS[kind] else None
            if problem:
                raise ValueError(f"{key}: {kw[key]} {problem}")
    stem = Path(kw[main_input]).stem + (f"__{Path(kw['audio']).stem}" if kw.get("audio") else "")
    kw.setdefault("audio", None)
    given, name = _given_name(name), safe_file_name(name if name is not None else stem)
    req = cls(output=str(outdir / f"{name}.mp4"), **kw)
    return Job(line, name, kind, req, given=given if given != name else "")


def _v3_job(values: dict, kind: str, line: int, base: Path, outdir: Path) -> Job:
    from .v3 import V3Row, build_v3_kwargs

    if kind != "animate":
        raise ValueError(f"kind '{kind}': EchoMimicV3 flash-pro rows animate a reference (kind animate)")
    values.pop("version")
    name = values.pop("name", None)
    kw = build_v3_kwargs(values, base, _convert)
    given = _given_name(name)
    name = safe_file_name(name if name is not None else f"{Path(kw['reference']).stem}__{Path(kw['audio']).stem}")
    return Job(line, name, "animate", V3Row(output=str(outdir / f"{name}.mp4"), **kw), given=given if given != name else "")


def check_set_columns(values: dict) -> None:
    """``--set KEY=VALUE`` keys, before any row is read: one no row kind has (a typo) or one a row may not set is said
    once, naming --set, not as the same error on every row of the manifest."""
    from .v3 import V3Row

    known = {f.name for cls in (*_request_types().values(), V3Row) for f in fields(cls)} | set(ALIASES)
    known = (known - set(NOT_PER_ROW) - {"color_transfer"}) | {"kind", "name", "version", "mode"}
    for raw in values:
        key = _key(raw)
        if key in NOT_PER_ROW:
            raise EchoMimicError(f"--set {raw}: not a column: {NOT_PER_ROW[key]}.")
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), 1, 0.75)
            meant = f"did you mean --set {close[0]}=...? " if close else ""
            raise EchoMimicError(f"--set {raw}: no manifest column is called '{raw}'; {meant}--set takes any column of a "
                                 f"row (an option of animate or dub by its long name): {', '.join(sorted(known))}.")


def defaults_from_cwd(defaults: dict | None, base: Path) -> dict:
    """``--models`` and ``--set`` paths are typed where the command runs: read from the current folder, not the
    manifest's (a value that means the same file from both is left as it was: same fingerprints as before)."""
    out = dict(defaults or {})
    for k, v in out.items():
        key = _key(k)
        if key not in CWD_PATHS or not isinstance(v, str) or v.strip() == AUTO_POSE:
            continue
        items = split_cell(v) if key == "lora" else [v.strip()] if v.strip() else []
        moved = [not Path(i).expanduser().is_absolute() and os.path.abspath(base / i) != os.path.abspath(i) for i in items]
        if any(moved):
            try:
                out[k] = SEPARATOR.join(row_path(i, Path.cwd(), key) for i in items)
            except ValueError as exc:
                raise EchoMimicError(f"--set {k}: {exc}") from None
    return out
