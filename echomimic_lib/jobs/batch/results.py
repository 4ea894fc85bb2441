"""``OUTDIR/results.jsonl``: one JSON object per row, and the fingerprint that lets a rerun skip finished rows.

A row's record: ``name``, ``line``, ``kind``, ``status`` (``ok`` | ``error``), ``output``, ``seconds``,
``frames``, ``peak_rss_gb`` (the worker process's peak so far: it keeps its models between jobs),
``peak_vram_gb`` (this job's, on a GPU), ``scores`` (the weight-free scores of ``echomimic evaluate``),
``error`` (on failure), ``fingerprint``, ``worker``, ``attempts``, ``frames_sha256`` (of the rendered uint8 frames
before H.264 encoding: the encoder itself is not bit-stable from run to run on every input, the frames are; V3 rows
too). Every record has each of these fields (null where it does not apply: :data:`.runner.RECORD_FIELDS`). V3 rows
also carry ``size`` and ``prompts_encoded`` (prompts this row encoded with umT5; 0: all were cached).

During a run each finished row is appended and flushed to disk at once, so a killed batch loses at most the
rows in flight; at the end the file is rewritten (atomically) with one line per row in manifest order. When
a row appears more than once, its last line counts.

The fingerprint is a SHA-256 over the job's kind, its settings (every request field except the output and
the device; a field added later only when it is set, :data:`LATER_FIELDS`) and the content of its input files
and folders (stacked LoRAs: one digest per file, in order; a row with one LoRA hashes as before stacks existed),
plus the weight set it uses: a rerun skips a row only when its record says ``ok``, the
fingerprint is the same and the output file exists.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from ...errors import EchoMimicError
from ...io.json_file import loads_json

log = logging.getLogger(__name__)
FILE_NAME = "results.jsonl"
# request fields added after the first batch release, with their default (hashed only when set to something else)
LATER_FIELDS = {"compile": False, "cuda_graphs": False, "deep_cache": 0, "deep_cache_branch": 0, "stabilize": "off"}
NOT_HASHED = ("output", "device", "resumable")  # where and how a row is rendered, not what it renders
LATER_V3_FIELDS = {"lora_strength": 1.0, "long_mode": "reanchor", "fp8": False, "vae_tiling": False}  # the same for EchoMimicV3 rows (``lora`` itself is an input, hashed when set)
INPUT_FIELDS = {"animate": ("reference", "audio", "landmarks", "pose", "lora"), "dub": ("video", "audio")}  # hashed by content


def _digest_file(path: Path, h) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def content_digest(path) -> str:
    """SHA-256 of a file's bytes, or of a folder's relative names and file contents."""
    p, h = Path(path), hashlib.sha256()
    if p.is_dir():
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0")
            _digest_file(f, h)
    elif p.is_file():
        _digest_file(p, h)
    else:
        h.update(b"missing:" + str(p).encode())
    return h.hexdigest()


def _cached_digest(path, digests: dict | None) -> str:
    """:func:`content_digest`, read once per file for a whole plan (``digests``: one batch's cache; a file is known by
    its resolved path, size and modification time, so one edited meanwhile is read again)."""
    if digests is None:
        return content_digest(path)
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return content_digest(path)
    if key not in digests:
        digests[key] = content_digest(path)
    return digests[key]


def fingerprint(job, digests: dict | None = None) -> str:
    settings = asdict(job.request)
    inputs = {}
    for key in INPUT_FIELDS[job.kind]:
        value = settings.pop(key, None)
        if isinstance(value, (list, tuple)):  # stacked LoRAs: one digest per file, in order (one file: as before)
            inputs[key] = [_cached_digest(v, digests) for v in value]
        elif value:
            inputs[key] = _cached_digest(value, digests)
    for key in NOT_HASHED:
        settings.pop(key, None)
    later = dict(LATER_FIELDS, **(LATER_V3_FIELDS if settings.get("version") == "v3-flash" else {}))
    for key, default in later.items():  # hashed only when set, so rows recorded before they existed stay done
        if settings.get(key, default) == default:
            settings.pop(key, None)
    doc = {"kind": job.kind, "settings": settings, "inputs": inputs, "weights": [str(k) for k in job.weight_key]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def read_results(outdir) -> dict[str, dict]:
    """name -> the row's last record (a torn last line, from a killed run, is ignored)."""
    path = Path(outdir) / FILE_NAME
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    with open(path, "rb") as fh:
        for line in fh:
            try:
                rec = loads_json(line, str(path), expect=dict)
            except EchoMimicError:  # torn, not UTF-8, or nested past what the parser reads: not ours
                continue
            if isinstance(rec.get("name"), str):
                out[rec["name"]] = rec
    return out


def is_done(job, previous: dict[str, dict]) -> bool:
    rec = previous.get(job.name)
    return bool(rec and rec.get("status") == "ok" and rec.get("fingerprint") == job.fingerprint and job.output.is_file())


def kind_of(path: Path) -> str:
    """What is at ``path``, as a refusal says it (an output name taken by something else)."""
    if os.path.islink(path) and not os.path.exists(path):
        return "a link to nothing (or a loop of links)"
    if path.is_file():
        return "a file"
    if path.is_dir():
        return "a folder"
    return "not a regular file (a named pipe, a socket or a device)"


def check_results_file(outdir) -> None:
    """``OUTDIR/results.jsonl`` is a regular file (a link to one too) or not there yet (a run and a dry run say it
    before any row is checked)."""
    path = Path(outdir) / FILE_NAME
    if os.path.lexists(path) and not path.is_file():
        raise EchoMimicError(f"{path} exists and is {kind_of(path)}, not a regular file: the batch keeps every row's "
                             "record there. Move it away, or choose another -o folder.")


class ResultsFile:
    """Appends records as rows finish (flushed and synced); :meth:`rewrite` leaves one line per row."""

    def __init__(self, outdir):
        self.path = Path(outdir) / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_results_file(outdir)  # (a run says it before any row is checked)
        self._fh = open(self.path, "ab", buffering=0)  # unbuffered: a failed write is never written again later
        self._torn = self._said = False
        self.unwritten: list[str] = []  # rows whose line a write refused (a full disk): only the final rewrite has them

    def append(self, record: dict) -> None:
        """Add ``record`` and sync it. A write the system refuses (a full disk) is said once and the batch goes on:
        these lines only spare a killed batch its finished rows, and the file is rewritten whole at the end; the line
        after a torn one starts on a line of its own (:func:`read_results` skips the torn one)."""
        data = memoryview((("\n" if self._torn else "") + json.dumps(record, default=str) + "\n").encode("utf-8"))
        try:
            while data:
                data = data[self._fh.write(data):]
            os.fsync(self._fh.fileno())
        except OSError as exc:
            self._torn = True
            self.unwritten.append(str(record.get("name")))
            if not self._said:
                self._said = True
                from ...io.os_errors import os_error_text

                log.warning("%s The batch goes on; the file is written whole when it ends (a batch stopped before then "
                            "renders the rows missing from it again).", os_error_text(exc, self.path, "write"))
            return
        self._torn = False
        if record.get("name") in self.unwritten:  # written now (a row retried): no longer missing
            self.unwritten.remove(record.get("name"))

    def rewrite(self, records: list[dict]) -> None:
        self._fh.close()
        from ...io.file_safety import publish, regular_target

        fd, tmp = tempfile.mkstemp(prefix=".results.", suffix=".partial", dir=regular_target(self.path).parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for rec in records:
                    fh.write(json.dumps(rec, default=str) + "\n")
            publish(tmp, self.path)  # the umask's mode, not mkstemp's 0600; a link is written through
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def remove_partials(job) -> int:
    """Delete the temporary files a killed render of ``job`` left (``.<name>.*.partial.mp4``), holding the output's
    claim (:class:`..output_file.OutputClaim`) meanwhile, and that of its name with the other video extensions (whose
    renders write the same partial names): while another render holds one (``echomimic animate -o`` the same file, in
    another terminal) a partial file there is that render's, in flight, and is left alone."""
    import contextlib

    from ...errors import EchoMimicError
    from ..output_file import OUTPUT_SUFFIXES, OutputClaim

    names = dict.fromkeys([job.output, *(job.output.with_suffix(s) for s in OUTPUT_SUFFIXES)])
    with contextlib.ExitStack() as claims:
        try:
            for name in names:
                claims.enter_context(OutputClaim(name))
        except (EchoMimicError, OSError) as exc:  # (held by a live render, or no claim can be made there)
            log.info("%s: partial files left as they are (%s)", job.output, exc)
            return 0
        return _remove_partials(job)


def _remove_partials(job) -> int:
    from ...io.file_safety import temp_prefix

    n, head, tail = 0, temp_prefix(job.output.stem), f".partial{job.output.suffix}"
    for p in job.output.parent.glob(f"{head}*{tail}"):
        if "." in p.name[len(head):-len(tail)]:  # mkstemp's part has no dot: '.a.b.x1y2.partial.mp4' is row a.b's, not a's
            continue
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
