"""A batch manifest: CSV or JSONL, one row a job, or two folders crossed; every row checked before any weight loads.

Columns are the single commands' long options (``reference``, ``audio``, ``pose``, ``landmarks``, ``lora``,
``seed``, ``width``, ``steps``, ``version``, ``mode``, ``acc``, ``no-face-crop``, ...; ``-`` or ``_`` alike; a row
with ``version`` = ``v3-flash`` takes the options of ``animate --version v3-flash`` instead: :mod:`.v3`; ``lora``
may stack several files separated by ``;``, ``lora-strength`` one value or one per file: :mod:`.lora_columns`) plus:

- ``kind``: ``animate`` (default) or ``dub`` (default when the row has a ``video``);
- ``name``: the output's name, ``OUTDIR/<name>.mp4`` (default ``<reference or video stem>__<audio stem>``,
  with ``-<line>`` added to a name that repeats). A stable name is how a rerun finds a finished row.

Relative paths are read from the manifest's folder (``--models`` / ``--set`` paths: from the current one). Files as
spreadsheets save them (a BOM, UTF-16, ``;`` or tab separators, Windows paths): :mod:`.manifest_text`. Two kinds of
problem are told apart:

- the row cannot be understood (unknown column or kind, a number that is not one, a missing input file,
  a repeated name): :class:`ManifestError` lists every such row with its line and nothing runs;
- the inputs are there but unusable (corrupt or silent audio, an unreadable image, a size the networks
  refuse): the job's own checks (:func:`echomimic_lib.jobs.animate_checks.preflight`) run for every row
  up front, and the row becomes an error row while the others go on.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ...errors import EchoMimicError
from ...io.file_names import safe_file_name
from ..lora_args import SEPARATOR, split_cell
from ..pose_sources import AUTO_POSE
from .lora_columns import lora_columns
from .manifest_text import csv_rows, duplicate_columns, read_text, row_path, separator
from .plan import check_jobs  # the rows' own checks (re-exported)
from .results import INPUT_FIELDS
from .v3 import VERSION as V3  # EchoMimicV3 flash-pro rows: columns and checks in .v3

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
OTHER_MEDIA = (".heic", ".heif", ".avif", ".tif", ".tiff", ".gif", ".jfif", ".opus", ".aif", ".aiff", ".wma", ".oga")  # told, not read
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


SHOWN = 50  # a manifest of thousands of bad rows (a wrong folder for every path): the first 50 and a count


class ManifestError(EchoMimicError):
    """Rows that cannot be understood; ``problems`` is a list of (line, message)."""

    def __init__(self, source: str, problems: list[tuple[int, str]]):
        self.problems = problems  # all of them; the message shows the first SHOWN
        lines = "\n".join(f"  line {n}: {m}" for n, m in problems[:SHOWN])
        if len(problems) > SHOWN:
            lines += f"\n  ... and {len(problems) - SHOWN} more row(s) (after line {problems[SHOWN - 1][0]})"
        super().__init__(f"{source}: {len(problems)} row(s) cannot be run; nothing was started:\n{lines}\n"
                         "Fix these rows (or remove them) and run the same command again.")


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
    prompts: tuple = ()       # V3 rows: the batch's distinct prompts on the same models folder (batch.v3.share_prompts)
    given: str = ""           # the 'name' cell as written, when it differs from ``name`` (said when two rows collide)

    @property
    def output(self) -> Path:
        return Path(self.request.output)


def _request_types():
    from ..animate import AnimateRequest
    from ..dub import DubRequest

    return {"animate": AnimateRequest, "dub": DubRequest}


def _key(name: str) -> str:
    return str(name).strip().lstrip("-").replace("-", "_").lower()


def _column(name: str) -> str:
    """The request field a column sets (``no-face-crop`` and ``face_crop`` are one)."""
    return ALIASES.get(_key(name), (_key(name),))[0]


def _given(values: dict) -> dict:
    """A row's (or the ``--set`` defaults') values that are given, under their normalised keys: an empty cell, a
    blank string or a JSON null means "not given", whichever spelling (``-`` or ``_``) the column has."""
    return {_key(k): v for k, v in values.items()
            if k is not None and v is not None and not (isinstance(v, str) and v.strip() == "")}


def _with_defaults(defaults: dict | None, row: dict) -> dict:
    """``defaults`` for every row, a value the row gives itself winning (cleaned first, so an empty cell never
    overrides a default, in either spelling of the column)."""
    return {**_given(defaults or {}), **_given(row)}


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
    values = _given(values)
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
            raise ValueError(f"unknown column '{key}' for {kind}; known: {', '.join(known)}")
        converted = _convert(value, annotations[target], key)
        kw[target] = (not converted) if inverted else converted
    main_input = "video" if kind == "dub" else "reference"
    if not kw.get(main_input):
        raise ValueError(f"{main_input}: missing; every {kind} row needs one")
    for key in PATH_FIELDS[kind]:
        if kw.get(key) and not (key == "pose" and kw[key] == AUTO_POSE):  # pose auto: gestures from the speech, no file
            kw[key] = row_path(kw[key], base, key)
            if key in INPUT_FIELDS[kind] and not Path(kw[key]).exists():
                raise ValueError(f"{key}: {kw[key]} not found")
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


def _rows_csv(path: Path):
    fh = read_text(path)  # UTF-8 (a BOM or not) or UTF-16; anything else refused naming the line (.manifest_text)
    sep = separator(fh.readline())  # "," or the header's ";" / tab
    fh.seek(0)
    reader = csv.reader(fh, delimiter=sep)
    header = next(csv_rows(reader, path), [])
    twice = duplicate_columns(header, _column)
    if twice:
        yield 1, ValueError(twice)
        return
    for cells in csv_rows(reader, path):
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        extra = [c for c in cells[len(header):] if c.strip()]  # empty cells past the header's columns: nothing given
        if extra:
            yield reader.line_num, ValueError(f"{len(cells) - len(header)} cell(s) more than the header's {len(header)} columns")
            continue
        unnamed = [n for n, (k, c) in enumerate(zip(header, cells), 1) if not k.strip() and c.strip()]
        if unnamed:
            yield reader.line_num, ValueError(f"column {unnamed[0]} has a value but no name in the header; name the column "
                                              "in the first line, or clear its cells")
            continue
        yield reader.line_num, {k: c for k, c in zip(header, cells) if k.strip()}


def _object(pairs):
    twice = duplicate_columns([k for k, _ in pairs], _column, "line")
    if twice:
        raise ValueError(twice)
    return dict(pairs)


def _rows_jsonl(path: Path):
    for n, text in enumerate(read_text(path), 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(text, object_pairs_hook=_object)
        except RecursionError:  # Python's parser gives up on brackets nested this deep: no row is built like that
            yield n, ValueError("not a manifest row: its JSON nests lists or objects too deeply to be read (a row is "
                                "one flat JSON object {\"reference\": ..., \"audio\": ...})")
            continue
        except ValueError as exc:
            if not isinstance(exc, json.JSONDecodeError):
                yield n, exc
                continue
            yield n, ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        yield n, row if isinstance(row, dict) else ValueError("each line must be one JSON object {...}")


def _inputs(job: Job) -> list[tuple[str, Path]]:
    req = job.request
    return [(key, Path(getattr(req, key)).resolve()) for key in ("reference", "audio", "video", "landmarks", "pose")
            if isinstance(getattr(req, key, None), str)]


def _finish(jobs: list[Job], problems: list[tuple[int, str]], source: str) -> list[Job]:
    seen: dict[str, Job] = {}
    for job in jobs:  # a repeated chosen name is an error (a repeated default name got its line already)
        key = job.name.casefold()  # Windows and macOS: Talk.mp4 and talk.mp4 are one file
        if key in seen:
            first = seen[key]
            if job.given or first.given:  # 'a/b' and 'a_b', 'take 1' and 'take:1' (both 'take_1'): one file name
                other = first.given or first.name
                said = (f"name '{job.given or job.name}' is file {job.name}.mp4, as is line {first.line}'s '{other}' (file "
                        "names keep letters, digits and . _ + -, other characters become _, and names differing in case")
            else:
                said = f"name '{job.name}' is also used on line {first.line} (names differing only in case"
            problems.append((job.line, f"{said} are one file on Windows and macOS); give each row its own name"))
        seen.setdefault(key, job)
    read = {path: (job.line, key) for job in reversed(jobs) for key, path in _inputs(job)}
    for job in jobs:  # a video written over a row's input (-o the media folder, a name like an input's): the input is lost
        hit = read.get(job.output.resolve())
        if hit:
            problems.append((job.line, f"the output {job.output} is the {hit[1]} of line {hit[0]}; writing it would replace "
                                       "that input. Give this row another name, or choose another -o folder"))
    if problems:
        raise ManifestError(source, sorted(problems))
    if not jobs:
        raise EchoMimicError(f"{source}: no jobs (the manifest has no rows, or the folders no matching files).")
    return jobs


def _from_cwd(defaults: dict | None, base: Path) -> dict:
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


def read_manifest(path, outdir, defaults: dict | None = None) -> list[Job]:
    """Jobs of a .csv or .jsonl manifest (``defaults``: values for every row, a row's own value wins)."""
    path, outdir = Path(path), Path(outdir)
    defaults = _from_cwd(defaults, path.parent)
    if not path.is_file():
        if path.is_dir():
            raise EchoMimicError(f"{path}: is a folder, not a manifest; give a .csv or .jsonl file, or a folder of images as "
                                 "--images DIR (of videos: --videos DIR) with --audios DIR.")
        raise EchoMimicError(f"{path}: manifest not found; give a .csv or .jsonl file (or --images/--videos with --audios).")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm", ".xls", ".ods", ".numbers"):
        raise EchoMimicError(f"{path}: a spreadsheet workbook, not a manifest; save the sheet as CSV (Excel: File > Save As > "
                             f"'CSV UTF-8 (Comma delimited)') and pass the .csv file.")
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise EchoMimicError(f"{path}: the manifest must be .csv or .jsonl (one JSON object a line).")
    rows = _rows_csv(path) if suffix in (".csv", ".tsv") else _rows_jsonl(path)
    jobs, problems, names = [], [], {}
    for line, row in rows:
        if isinstance(row, Exception):
            problems.append((line, str(row)))
            continue
        try:
            job = build_job(_with_defaults(defaults, row), line, path.parent, outdir)
        except ValueError as exc:
            problems.append((line, str(exc)))
            continue
        if job.name.casefold() in names and "name" not in _given(row):  # a default name repeats: add the line
            job = replace(job, name=f"{job.name}-{line}")
            job.request = replace(job.request, output=str(outdir / f"{job.name}.mp4"))
        names.setdefault(job.name.casefold(), line)
        jobs.append(job)
    return _finish(jobs, problems, str(path))


def _files(folder, suffixes, flag: str) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise EchoMimicError(f"{flag} {d}: not a folder.")
    files = [p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")]
    found = sorted(p for p in files if p.suffix.lower() in suffixes)
    skipped = sorted({p.suffix.lower() for p in files if p.suffix.lower() in OTHER_MEDIA})
    exts = "/".join(s[1:] for s in suffixes)
    why = (f"its {', '.join(skipped)} files are not picked up from a folder (only {exts}): list them in a manifest "
           "(.csv) instead" + ("; HEIC/HEIF/AVIF photos cannot be read at all: convert them to PNG or JPEG"
                               if {".heic", ".heif", ".avif"} & set(skipped) else ""))
    if not found:
        raise EchoMimicError(f"{flag} {d}: no {exts} files in it" + (f"; {why}." if skipped else "."))
    if skipped:
        log.warning("%s %s: %s.", flag, d, why)
    return found


def crossed(outdir, audios, images=None, videos=None, defaults: dict | None = None) -> list[Job]:
    """Every image (animate) or video (dub) with every audio; job n is pair n in sorted order."""
    if (images is None) == (videos is None):
        raise EchoMimicError("give either --images DIR or --videos DIR with --audios DIR (or a manifest file).")
    key, folder, suffixes = ("reference", images, IMAGE_SUFFIXES) if images else ("video", videos, VIDEO_SUFFIXES)
    sources = _files(folder, suffixes, "--images" if images else "--videos")
    sounds = _files(audios, AUDIO_SUFFIXES, "--audios")
    jobs, problems = [], []
    for n, (src, snd) in enumerate(((s, a) for s in sources for a in sounds), 1):
        try:
            jobs.append(build_job(_with_defaults(defaults, {key: str(src), "audio": str(snd)}), n, Path.cwd(), Path(outdir)))
        except ValueError as exc:
            problems.append((n, f"{src.name} x {snd.name}: {exc}"))
    return _finish(jobs, problems, f"{folder} x {audios}")


__all__ = ["Job", "ManifestError", "read_manifest", "crossed", "check_jobs", "build_job"]
