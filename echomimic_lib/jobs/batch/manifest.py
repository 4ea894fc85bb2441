"""A batch manifest: CSV or JSONL, one row a job, or two folders crossed; every row checked before any weight loads.

Columns and what each means: :mod:`.manifest_row`.

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
from dataclasses import replace
from pathlib import Path

from ...errors import EchoMimicError
from ...io.json_file import NESTED
from .manifest_row import Job, build_job, column_field, defaults_from_cwd, given_values, with_defaults
from .manifest_text import csv_rows, duplicate_columns, read_text, separator
from .plan import check_jobs  # the rows' own checks (re-exported)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
OTHER_MEDIA = (".heic", ".heif", ".avif", ".tif", ".tiff", ".gif", ".jfif", ".opus", ".aif", ".aiff", ".wma", ".oga")  # told, not read


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


def _rows_csv(path: Path):
    fh = read_text(path)  # UTF-8 (a BOM or not) or UTF-16; anything else refused naming the line (.manifest_text)
    sep = separator(fh.readline())  # "," or the header's ";" / tab
    fh.seek(0)
    reader = csv.reader(fh, delimiter=sep)
    header = next(csv_rows(reader, path), [])
    twice = duplicate_columns(header, column_field)
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
    twice = duplicate_columns([k for k, _ in pairs], column_field, "line")
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
            yield n, ValueError(f"not a manifest row: {NESTED} (a row is one flat JSON object {{\"reference\": ..., "
                                "\"audio\": ...})")
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


def read_manifest(path, outdir, defaults: dict | None = None, loose=()) -> list[Job]:
    """Jobs of a .csv or .jsonl manifest (``defaults``: values for every row, a row's own value wins; ``loose``: the
    keys of ``defaults`` given only to rows whose kind has the column, :func:`.manifest_row.with_defaults`)."""
    path, outdir = Path(path), Path(outdir)
    defaults = defaults_from_cwd(defaults, path.parent)
    if not path.is_file():
        if path.is_dir():
            raise EchoMimicError(f"{path}: is a folder, not a manifest; give a .csv or .jsonl file, or a folder of images as "
                                 "--images DIR (of videos: --videos DIR) with --audios DIR.")
        from .manifest_text import not_a_file

        what = not_a_file(path)
        what = "manifest not found" if what in (None, "not found") else what.split(":")[0].split(";")[0]
        raise EchoMimicError(f"{path}: {what}; give a .csv or .jsonl file (or --images/--videos with --audios)"
                             + (" (a manifest from a pipe or a command: save it to a file first)."
                                if "pipe" in what or "device" in what else "."))
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm", ".xls", ".ods", ".numbers"):
        raise EchoMimicError(f"{path}: a spreadsheet workbook, not a manifest; save the sheet as CSV (Excel: File > Save As > "
                             f"'CSV UTF-8 (Comma delimited)') and pass the .csv file.")
    if suffix not in (".csv", ".tsv", ".jsonl", ".ndjson"):
        raise EchoMimicError(f"{path}: the manifest must be .csv or .jsonl (one JSON object a line).")
    rows = _rows_csv(path) if suffix in (".csv", ".tsv") else _rows_jsonl(path)
    jobs, problems, names, kept, tried = [], [], {}, set(), 0
    for line, row in rows:
        if isinstance(row, Exception):
            problems.append((line, str(row)))
            continue
        tried += 1
        try:
            job = build_job(with_defaults(defaults, row, loose, kept), line, path.parent, outdir)
        except ValueError as exc:
            problems.append((line, str(exc)))
            continue
        if job.name.casefold() in names and "name" not in given_values(row):  # a default name repeats: add the line
            job = replace(job, name=f"{job.name}-{line}")
            job.request = replace(job.request, output=str(outdir / f"{job.name}.mp4"))
        names.setdefault(job.name.casefold(), line)
        jobs.append(job)
    _unused(loose, kept, defaults, tried)
    return _finish(jobs, problems, str(path))


def _unused(loose, kept: set, defaults: dict, rows: int) -> None:
    """A ``--set`` key that no row's kind has: said once (a value that would change nothing is a mistake)."""
    unused = [k for k in loose if column_field(k) not in {column_field(x) for x in kept}]
    if unused and rows:
        shown = ", ".join(f"--set {k}={defaults.get(k, '')}" for k in unused)
        raise EchoMimicError(f"{shown}: no row here has that column (it belongs to other rows: animate, dub or "
                             "EchoMimicV3 ones); drop it, or give it to the rows it is for as a manifest column.")


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


def crossed(outdir, audios, images=None, videos=None, defaults: dict | None = None, loose=()) -> list[Job]:
    """Every image (animate) or video (dub) with every audio; job n is pair n in sorted order."""
    if (images is None) == (videos is None):
        raise EchoMimicError("give either --images DIR or --videos DIR with --audios DIR (or a manifest file).")
    key, folder, suffixes = ("reference", images, IMAGE_SUFFIXES) if images else ("video", videos, VIDEO_SUFFIXES)
    sources = _files(folder, suffixes, "--images" if images else "--videos")
    sounds = _files(audios, AUDIO_SUFFIXES, "--audios")
    jobs, problems, kept = [], [], set()
    for n, (src, snd) in enumerate(((s, a) for s in sources for a in sounds), 1):
        try:
            values = with_defaults(defaults, {key: str(src), "audio": str(snd)}, loose, kept)
            jobs.append(build_job(values, n, Path.cwd(), Path(outdir)))
        except ValueError as exc:
            problems.append((n, f"{src.name} x {snd.name}: {exc}"))
    _unused(loose, kept, defaults or {}, len(sources) * len(sounds))
    return _finish(jobs, problems, f"{folder} x {audios}")


__all__ = ["ManifestError", "read_manifest", "crossed", "check_jobs"]
