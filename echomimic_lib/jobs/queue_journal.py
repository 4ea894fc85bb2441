"""The queue state file's format (:mod:`.queue_state`): a JSON document, the state as it was when last compacted (one job
or run a line, :func:`state_text`; the format of the versions before the journal, which read it, and which this one
reads), followed by a journal: one JSON line per change since, appended (and synced to disk) as each job's prompt is
sent, accepted, collected or failed; the last line about a job (or run) wins. Recording a job's outcome so costs one
short line, whatever the number of jobs (rewriting the whole file after each prompt made a run of N jobs cost N^2).

The file is compacted (rewritten whole, atomically, the journal folded in) when a run starts and ends, and when the
journal has grown past twice the live records. A last line cut short (a run killed, or the machine losing power, while
writing it) or a damaged line is ignored with a note; every line before it is kept, and the next line is written
after a line break of its own, never glued to it."""
from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

from ..io.json_file import loads_json
from .queue_replies import QueueError

VERSION = 2  # 1: no "runs" (read as well); the journal lines after the document: read since the journal came
FIX = ("delete it or move it away (--resume then queues every job again), or give --state another file.")
NOT_STATE = ("give --state a file of its own (or leave --state out for the default, .echomimic_queue.json in the portraits "
             "/ videos folder).")  # (a video or other file given by mistake: never "delete it")
HEAD_BYTES = 128  # the document's start, which holds its "epoch" (a new one each compaction)
SLACK = 64  # journal lines allowed beyond twice the live records before a compaction
PEEK_BYTES = 1 << 16  # read first: a file that does not start as a JSON object is refused from these alone
BINARY = getattr(os, "O_BINARY", 0)  # (Windows: no line endings translated)


def new_epoch() -> str:
    return uuid.uuid4().hex


def _dumps(value) -> str:
    """``value`` as JSON, non-ASCII letters as they are; a text holding a lone surrogate (a file name or argument of
    bytes that are not UTF-8, as Python reads them) escaped, which writes as UTF-8 and reads back the same."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def state_text(servers: dict, runs: dict, lines: dict | None = None, epoch: str | None = None) -> str:
    """The state file's document: one job (or run) a line, each by json's C encoder. ``lines``: {(server, prefix):
    (record, line)} of the last write, reused for a record that is the same object (records are replaced, never
    changed); ``epoch``: this compaction's id, kept at the top (a journal is only ever appended to the compaction it
    follows)."""
    lines = {} if lines is None else lines

    def block(items: dict, inner, pad: str) -> str:
        if not items:
            return "{}"
        rows = [f"{pad} {_dumps(k)}: {inner(k, v)}" for k, v in items.items()]
        return "{\n" + ",\n".join(rows) + f"\n{pad}}}"

    def line(server: str, prefix: str, rec) -> str:
        kept = lines.get((server, prefix))
        if kept is None or kept[0] is not rec:
            kept = lines[(server, prefix)] = (rec, _dumps(rec))
        return kept[1]
    jobs = block(servers, lambda url, j: block(j, lambda p, rec: line(url, p, rec), "  "), " ")
    head = f'{{\n "version": {VERSION},\n' + (f' "epoch": "{epoch}",\n' if epoch else "")
    return (f'{head} "servers": {jobs},\n "runs": '
            f'{block(runs, lambda k, run: _dumps(run), " ")}\n}}\n')


def job_event(prefix: str, server: str | None, rec: dict | None) -> dict:
    """A journal line: the job ``prefix`` now has ``rec`` on ``server`` (None: no record)."""
    return {"job": prefix, "server": server, "rec": rec}


def run_event(run_id: str, entry: dict | None) -> dict:
    return {"run": run_id, "entry": entry}


def apply_event(servers: dict, runs: dict, event) -> bool:
    """``event`` (a journal line read) applied; False: it is none (damaged)."""
    if not isinstance(event, dict):
        return False
    if isinstance(event.get("job"), str):
        for jobs in servers.values():
            jobs.pop(event["job"], None)
        server, rec = event.get("server"), event.get("rec")
        if isinstance(server, str) and isinstance(rec, dict):
            servers.setdefault(server, {})[event["job"]] = record_read(rec)
        return True
    if isinstance(event.get("run"), str):
        if run_entry(event.get("entry")):
            runs[event["run"]] = event["entry"]
        else:
            runs.pop(event["run"], None)
        return True
    return False


def apply_lines(raw: bytes, servers: dict, runs: dict) -> tuple[int, int, bool]:
    """The journal bytes ``raw`` applied: (lines applied, lines ignored, whether the last one is cut short)."""
    pieces = raw.split(b"\n")
    good = bad = 0
    torn = False
    for i, piece in enumerate(pieces):
        if not piece.strip():
            continue
        try:
            event = json.loads(piece.decode("utf-8"))
        except (ValueError, RecursionError):
            event = None
        if apply_event(servers, runs, event):
            good += 1
        elif i == len(pieces) - 1:  # (no line break after it: written in part)
            torn = True
        else:
            bad += 1
    return good, bad, torn


class Read:
    """What reading the file found: the state, where the document's journal stands (``epoch``: the document's, None
    for a file of an older version; ``size``: bytes read; ``lines``: journal lines), and the lines ignored."""

    def __init__(self, servers: dict, runs: dict, epoch: str | None, size: int, lines: int, bad: int, torn: bool, key):
        self.servers, self.runs, self.epoch, self.size, self.lines = servers, runs, epoch, size, lines
        self.bad, self.torn, self.key = bad, torn, key

    def note(self, path) -> str | None:
        """What to say of the lines ignored (None: none)."""
        if not (self.bad or self.torn):
            return None
        what = ("its last line is cut short (a run stopped while writing it)" if self.torn and not self.bad else
                f"{self.bad + self.torn} of its journal lines {'is' if self.bad + self.torn == 1 else 'are'} cut short "
                "or damaged")
        return (f"note: {path}: {what}; ignored, every other line is kept (the job it was about is asked about, or "
                "queued, again).")


def _open_read(path: Path) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | BINARY)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise QueueError(f"{path} is not a regular file (a folder?), so not an `echomimic queue` state file; {NOT_STATE}")
    return fd, st


def load(path: Path) -> Read:
    """The whole file read: its document (a :class:`QueueError` naming the file and the fix when it is not a queue
    state) with the journal applied."""
    try:
        fd, st = _open_read(path)
    except FileNotFoundError:
        return Read({}, {}, None, 0, 0, 0, False, None)
    except OSError as exc:
        raise QueueError(f"{path}: the queue state kept for --resume cannot be read ({exc.strerror or exc}); {FIX}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(PEEK_BYTES)  # no JSON object at its start (a video given as --state): never read whole
            data += fh.read() if data.lstrip()[:1] in (b"", b"{") else b""
    except OSError as exc:
        raise QueueError(f"{path}: the queue state kept for --resume cannot be read ({exc.strerror or exc}); {FIX}") from None
    text = data.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip())
    what = "the queue state kept for --resume cannot be read"
    if start == len(text):
        doc, end = {"version": VERSION, "servers": {}}, len(text)
    else:
        if text[start] != "{":  # (no JSON object at its start: a video, a sound, a text given by mistake)
            raise QueueError(f"{path} is not an `echomimic queue` state file and is never overwritten; {NOT_STATE}")
        try:
            doc, end = json.JSONDecoder().raw_decode(text, start)
        except (ValueError, RecursionError):
            doc, end = None, -1
        if end < 0 or any("\udc80" <= c <= "\udcff" for c in text[:end]):  # (its own words: not JSON, not UTF-8)
            loads_json(data, str(path), what, FIX, QueueError)
            raise QueueError(f"{path}: {what}; {FIX}")
    doc = checked(doc, path)
    servers, runs = doc["servers"], doc["runs"]
    tail = text[end:].encode("utf-8", "surrogateescape")
    good, bad, torn = apply_lines(tail, servers, runs)
    servers = {s: j for s, j in servers.items() if j}  # (a server whose jobs all moved)
    epoch = doc.get("epoch") if isinstance(doc.get("epoch"), str) else None
    return Read(servers, runs, epoch, len(data), good + bad + torn, bad, torn, (st.st_dev, st.st_ino))


def checked(data, path) -> dict:
    """The document as read: ``{"servers": {url: {prefix: record}}, "runs": {id: run}, "epoch"?}``, or a
    :class:`QueueError` naming the file and the fix when it is not a queue state."""
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict) or not isinstance(data.get("version"), int):
        raise QueueError(f"{path} is not an `echomimic queue` state file (it holds other JSON) and is never overwritten; "
                         f"{NOT_STATE}")
    if data["version"] > VERSION:
        raise QueueError(f"{path} was written by a newer echomimic (state version {data['version']}); update echomimic, "
                         "or give --state another file.")
    servers = {s: {k: record_read(r) for k, r in j.items() if isinstance(r, dict)} for s, j in data["servers"].items()
               if isinstance(j, dict)}
    runs = data.get("runs") if isinstance(data.get("runs"), dict) else {}
    out = {"servers": servers, "runs": {k: r for k, r in runs.items() if run_entry(r)}}
    if isinstance(data.get("epoch"), str):
        out["epoch"] = data["epoch"]
    return out


def record_read(rec: dict) -> dict:
    """A job's record as read: saved files that are not a list of names (an edited or damaged file) are dropped, so the
    job is asked about again (never printed or recorded as its files)."""
    files = rec.get("files")
    if "files" in rec and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        rec = {k: v for k, v in rec.items() if k != "files"}
    return rec


def run_entry(run) -> bool:
    """Whether ``run`` is a run entry as :meth:`.QueueState.claim` writes it (a pid a process can have, its host and its
    jobs' prefixes as text); one that is not (an edited or damaged file) names no live run, and is dropped."""
    pid, prefixes = run.get("pid") if isinstance(run, dict) else None, run.get("prefixes") if isinstance(run, dict) else None
    host_ = run.get("host") if isinstance(run, dict) else None  # (none: not asked, and taken as live on another host)
    return (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 and isinstance(prefixes, list)
            and all(isinstance(p, str) for p in prefixes) and isinstance(host_, str) and bool(host_))


def read_tail(path: Path, key, epoch: str, size: int) -> bytes | None:
    """The bytes appended to ``path`` since this run saw it at ``size`` bytes, or None when it is not that file any more
    (replaced by a compaction: another inode or epoch; shorter): then it is read whole."""
    try:
        fd, st = _open_read(path)
    except (OSError, QueueError):
        return None
    try:
        if (st.st_dev, st.st_ino) != key or st.st_size < size:
            return None
        if f'"epoch": "{epoch}"'.encode() not in _pread(fd, HEAD_BYTES, 0):  # (an inode number used again)
            return None
        return _pread(fd, st.st_size - size, size) if st.st_size > size else b""
    finally:
        os.close(fd)


def _pread(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes at ``offset`` (Windows has no ``os.pread``: seek and read)."""
    if hasattr(os, "pread"):
        return os.pread(fd, count, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    chunks = []
    while count > 0 and (chunk := os.read(fd, count)):
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def append(path: Path, key, size: int, line: bytes) -> int:
    """``line`` appended to ``path`` and synced to disk, when it is still the file this run saw at ``size`` bytes:
    the bytes written (a line break first when the file does not end in one: a line written whole but for its break,
    by a run stopped or a disk filled, is never glued to this one); 0 when it is not (gone, replaced): the caller
    compacts instead."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0) | BINARY)
    except FileNotFoundError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != key or st.st_size != size:
            return 0
        if size and not line.startswith(b"\n") and _pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        return len(line)
    finally:
        os.close(fd)


def compact(path: Path, text: str):
    """``text`` (:func:`state_text`) as the whole file, atomically (a folder, device or pipe there is never replaced),
    synced to disk; (the file's key, its size)."""
    from ..io.file_safety import write_text_atomic

    write_text_atomic(path, text)
    fd, st = _open_read(path)
    try:
        try:
            os.fsync(fd)
        except OSError:  # (a file system that cannot sync a file opened for reading: the rename is what counts)
            pass
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino), st.st_size
