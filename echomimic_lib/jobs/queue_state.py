"""What ``echomimic queue`` has queued, kept on disk so that a run stopped while waiting (Ctrl-C, a closed SSH session)
can be picked up with ``--resume`` instead of queueing every job again.

The file (by default ``.echomimic_queue.json`` in the portraits or videos folder, ``--state FILE`` to choose) holds, per
server and per job prefix, the prompt_id (chosen and kept before the prompt is sent, ``sending`` until the server's
answer is read: ComfyUI keeps the id a client asks for), a fingerprint of the prompt sent (so a changed workflow,
seed or input is queued anew, not mistaken for the old prompt; ``plan``: the same with the local file names and their
sizes and times, which still says so when that server is gone) and, once collected, the saved files; a job has one
record, on the server its latest prompt went to (several ``--server``: each job's own), with ``attempts`` (the prompts
``--retry-failed`` has queued for it, the first included) and ``failed`` (why, when its prompt failed on the server). It
also names the runs under way (pid, the process's start time where the OS tells it, host, their jobs): a second run on
the same jobs is refused while the first one lives.

Every change is made under an OS lock (:class:`.queue_lock.StateLock`): the file is re-read, only this run's jobs are
updated, and it is rewritten atomically (:func:`~echomimic_lib.io.file_safety.write_text_atomic`), so runs sharing a
folder keep each other's entries. A file that is not a queue state (another JSON, a damaged one) is refused naming it
and the fix, never overwritten."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from ..io.json_file import read_json
from .queue_lock import StateLock, alive, host, process_start
from .queue_plan import build_prompt
from .queue_replies import QueueError

STATE_NAME = ".echomimic_queue.json"
VERSION = 2  # 1: no "runs" (read as well)


class StateInUse(QueueError):
    """A live run is queueing the same jobs with this state file."""


def fingerprint(prompt: dict) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def plan_mark(template: dict, job, seed: int | None = None, driving=None) -> str:
    """The job's fingerprint whatever server it goes to (its prompt with the local file names, where
    :func:`fingerprint` has the names a server gave the uploads, then ``.`` and :func:`inputs_mark` of its files): kept
    as a record's ``plan``, so a job whose server is gone is still known as changed (another workflow, seed, prefix, file
    name, or a file replaced under its name) or not (:func:`same_plan`)."""
    drive = Path(driving).name if driving else None
    if job.is_video:
        prompt = build_prompt(template, None, job.audio.name, job.prefix, seed, job.portrait.name, True)
    else:
        prompt = build_prompt(template, job.portrait.name, job.audio.name, job.prefix, seed, drive)
    return f"{fingerprint(prompt)}.{inputs_mark([job.portrait, job.audio, *([driving] if driving else [])])}"


def inputs_mark(paths) -> str:
    """The files' sizes and modification times (ns), hashed: a file replaced under its name (new content) changes it.
    A stat, not a hash of the content: free for videos of gigabytes, and every job's mark is made at the start of a run
    (a hash would read each input once more than its upload does). A file written again with the same bytes (a copy
    without ``-p``, a re-download) counts as changed, so its job is rendered again: never an old video listed for an
    input that may be new; only a different file given both the old size and the old time to the nanosecond
    (``touch -r``, ``cp -p`` of a same-size file) would pass as the same."""
    stats = []
    for path in paths:
        try:
            st = Path(path).stat()
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError:  # (gone since it was listed: its upload says so)
            stats.append(None)
    return fingerprint(stats)[:12]


def same_plan(rec: dict, plan: str) -> bool:
    """Whether ``rec`` (a job's record) is of the job whose :func:`plan_mark` is ``plan``: a record with no plan (an
    older file) is taken as the same job, one whose plan has no inputs part (written before it had one) is compared by
    its prompt part."""
    if "plan" not in rec:
        return True
    kept = rec["plan"]
    if not isinstance(kept, str):
        return False
    return kept == (plan if "." in kept else plan.split(".", 1)[0])


def default_path(portraits, videos) -> Path:
    return Path(videos if videos is not None else portraits) / STATE_NAME


def read_state(path: Path) -> dict:
    """``{"servers": {url: {prefix: record}}, "runs": {id: run}}`` of the file (empty when there is none), or a
    :class:`QueueError` naming the file and the fix when it is not a queue state."""
    data = {"version": VERSION, "servers": {}}
    if path.is_file():
        data = read_json(path, "the queue state kept for --resume cannot be read", "delete it or move it away (--resume "
                         "then queues every job again), or give --state another file.", QueueError, empty=data)
    if not isinstance(data, dict) or not isinstance(data.get("servers"), dict) or not isinstance(data.get("version"), int):
        raise QueueError(f"{path} is not an `echomimic queue` state file (it holds other JSON) and is never overwritten; "
                         "give --state a file of its own (or leave --state out for the default, .echomimic_queue.json "
                         "in the portraits / videos folder).")
    if data["version"] > VERSION:
        raise QueueError(f"{path} was written by a newer echomimic (state version {data['version']}); update echomimic, "
                         "or give --state another file.")
    servers = {s: {k: _record(r) for k, r in j.items() if isinstance(r, dict)} for s, j in data["servers"].items()
               if isinstance(j, dict)}
    runs = data.get("runs") if isinstance(data.get("runs"), dict) else {}
    return {"servers": servers, "runs": {k: r for k, r in runs.items() if _run_entry(r)}}


def _record(rec: dict) -> dict:
    """A job's record as read: saved files that are not a list of names (an edited or damaged file) are dropped, so the
    job is asked about again (never printed or recorded as its files)."""
    files = rec.get("files")
    if "files" in rec and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
        rec = {k: v for k, v in rec.items() if k != "files"}
    return rec


def _run_entry(run) -> bool:
    """Whether ``run`` is a run entry as :meth:`QueueState.claim` writes it (a pid a process can have, its host and its
    jobs' prefixes as text); one that is not (an edited or damaged file) names no live run, and is dropped."""
    pid, prefixes = run.get("pid") if isinstance(run, dict) else None, run.get("prefixes") if isinstance(run, dict) else None
    host_ = run.get("host") if isinstance(run, dict) else None  # (none: not asked, and taken as live on another host)
    return (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2**31 and isinstance(prefixes, list)
            and all(isinstance(p, str) for p in prefixes) and isinstance(host_, str) and bool(host_))


class QueueState:
    """The prompts of earlier runs (:meth:`find`) and this run's (:meth:`record`); :meth:`claim` / :meth:`release` name
    this run in the file while it runs. A file that is not a queue state is a :class:`QueueError` (raised here, before
    anything is uploaded); one that cannot be written is said once on stderr and the run goes on without it (queueing
    never fails for want of it)."""

    def __init__(self, path):
        self.path, self.ok = Path(path), True
        self.lock = StateLock(self.path.with_name(self.path.name + ".lock"))
        self.run_id, self.mine, self.claimed = uuid.uuid4().hex, set(), False
        self.data: dict = {}
        self._written, self._lines = None, {}  # (the file as this run last wrote it, and its lines: _update)
        if self.path.exists() and not self.path.is_file():  # never replaced: a folder, a fifo, a device
            self._give_up(f"{self.path} is not a regular file")
            return
        self.data = read_state(self.path)["servers"]

    def _give_up(self, why: str) -> None:
        if self.ok:
            sys.stderr.write(f"warning: cannot keep the queue state ({why}); --resume will not find this run (give --state "
                             "FILE in a writable folder).\n")
        self.ok = False

    def claim(self, prefixes) -> None:
        """Name this run and its jobs in the file; a :class:`QueueError` naming the other run when a live one (not
        ended, not killed) is queueing any of the same jobs. A killed run's entry is dropped."""
        if not self.ok:
            return
        prefixes = list(prefixes)

        def change(disk):
            runs = {k: r for k, r in disk["runs"].items() if alive(r.get("pid"), r.get("host"), r.get("pid_start"))}
            for other in runs.values():
                theirs = set(other.get("prefixes") or ())
                same = [p for p in prefixes if p in theirs]
                if same:
                    raise StateInUse(
                        f"another `echomimic queue` run (pid {other.get('pid')} on host {other.get('host')}, started "
                        f"{other.get('started')}) is queueing {len(same)} of the same job(s) ({same[0]}"
                        f"{', ...' if len(same) > 1 else ''}) with the state file {self.path}. Two runs queueing one job "
                        "would render it twice and overwrite each other's record: wait for that run to finish (or stop "
                        "it), then run this command again with --resume; or give this run another --prefix.")
            runs[self.run_id] = {"pid": os.getpid(), "host": host(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                 "command": " ".join(sys.argv)[:300] or "?", "prefixes": prefixes}
            start = process_start(os.getpid())
            if start is not None:
                runs[self.run_id]["pid_start"] = start
            disk["runs"] = runs
        self.claimed = self._update(change)

    def release(self) -> None:
        """This run is over: its name goes from the file (its records stay, for --resume)."""
        if self.ok and self.claimed:
            self.claimed = False
            self._update(lambda disk: disk["runs"].pop(self.run_id, None))

    def find(self, prefix: str, prefer=()) -> tuple[str, dict] | None:
        """(server, {prompt_id, fingerprint, files?}) of this job's recorded prompt, if there is one (a version-1 file
        can hold a job on several servers: one of ``prefer``, the servers given now, first)."""
        for server in [*(s for s in prefer if s in self.data), *self.data]:
            rec = self.data[server].get(prefix)
            if isinstance(rec.get("prompt_id"), str) if isinstance(rec, dict) else False:
                return server, rec
        return None

    def known(self, server: str, prefix: str, print_: str) -> dict | None:
        """The earlier record of this job's prompt on ``server`` ({prompt_id, files?}), if it was the same prompt."""
        found = self.find(prefix, [server])
        if found and found[0] == server and found[1].get("fingerprint") == print_:
            return found[1]
        return None

    def record(self, server: str, prefix: str, print_: str, prompt_id: str, files: list[str] | None = None,
               attempts: int | None = None, plan: str | None = None, sending: bool = False) -> int:
        """Keep this job's prompt (``files``: collected; ``plan``: its :func:`plan_mark`; ``sending``: about to be
        sent with this id, kept first so that a run stopped while the server answers still finds it). ``attempts`` (a
        prompt queued by ``--retry-failed``): how many this job has had; None: as many as its earlier record of the
        same prompt says (1 when there is none). Returns the attempts recorded."""
        old = (self.find(prefix) or (None, {}))[1]
        if attempts is None:
            same = old.get("fingerprint") == print_ and (plan is None or same_plan(old, plan))
            attempts = old.get("attempts", 1) if same else 1
        rec = {"prompt_id": prompt_id, "fingerprint": print_, "attempts": attempts if isinstance(attempts, int) else 1}
        if plan is not None:
            rec["plan"] = plan
        if sending:
            rec["sending"] = True
        if files is not None:
            rec["files"] = list(files)
        self._put(server, prefix, rec)
        return rec["attempts"]

    def withdraw(self, prefix: str, prompt_id: str, before: tuple[str, dict] | None) -> None:
        """The prompt kept as sending with ``prompt_id`` was not queued (the server refused it): the job's record goes
        back to ``before`` (what :meth:`find` said before it was kept; None: no record)."""
        now = self.find(prefix)
        if now is None or now[1].get("prompt_id") != prompt_id:
            return
        for jobs in self.data.values():
            jobs.pop(prefix, None)
        if before is not None:
            self.data.setdefault(before[0], {})[prefix] = before[1]
        self.mine.add(prefix)
        self._update(lambda disk: None)

    def failed(self, server: str, prefix: str, prompt_id: str, why: str) -> None:
        """This job's prompt failed on the server: said in its record (``--resume --retry-failed`` queues it again)."""
        found = self.find(prefix, [server])
        if found is not None and found[0] == server and found[1].get("prompt_id") == prompt_id:
            self._put(server, prefix, {**found[1], "failed": " ".join(str(why).split())[:300]})

    def _put(self, server: str, prefix: str, rec: dict) -> None:
        for jobs in self.data.values():
            jobs.pop(prefix, None)
        self.data.setdefault(server, {})[prefix] = rec
        self.mine.add(prefix)
        self._update(lambda disk: None)

    def _update(self, change) -> bool:
        """Under the lock: re-read the file, put this run's jobs in (``change`` edits the rest), rewrite it atomically.
        The file is parsed again only when it is not as this run last wrote it (another run wrote it: a new file, its
        inode, size or time differ), and a job's line is encoded again only when its record changed: a run of
        thousands of jobs rewrites it after each prompt."""
        if not self.ok:
            return False
        from ..errors import EchoMimicError
        from ..io.file_safety import write_text_atomic

        try:
            with self.lock:
                written, self._written = self._written, None
                disk = written[1] if written is not None and written[0] == _signature(self.path) else read_state(self.path)
                change(disk)
                servers = disk["servers"]
                for jobs in servers.values():  # this run's jobs: as this run has them (each on one server)
                    for prefix in self.mine:
                        jobs.pop(prefix, None)
                for server, jobs in self.data.items():
                    servers.setdefault(server, {}).update({p: r for p, r in jobs.items() if p in self.mine})
                servers = {s: j for s, j in servers.items() if j}
                self.data = {s: dict(j) for s, j in servers.items()}  # (other runs' records: seen by find too)
                text = state_text(servers, disk["runs"], self._lines)
                write_text_atomic(self.path, text)  # whole or not at all; never onto a folder, device or pipe
                self._written = (_signature(self.path), {"servers": servers, "runs": disk["runs"]})
        except StateInUse:
            raise
        except QueueError as exc:  # (the file was made something else meanwhile: never overwritten)
            self._give_up(str(exc))
            return False
        except (OSError, EchoMimicError) as exc:
            self._give_up(f"{getattr(exc, 'filename', None) or self.path}: {getattr(exc, 'strerror', None) or exc}")
            return False
        return True


def _signature(path: Path):
    """What tells whether ``path`` is still the file this run wrote (every write is a new file: its inode changes)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _dumps(value) -> str:
    """``value`` as JSON, non-ASCII letters as they are; a text holding a lone surrogate (a file name or argument of
    bytes that are not UTF-8, as Python reads them) escaped, which writes as UTF-8 and reads back the same."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def state_text(servers: dict, runs: dict, lines: dict | None = None) -> str:
    """The state file's text: one job (or run) a line, each by json's C encoder (``indent`` takes Python's own: 0.36 s
    a write for 10 000 jobs, and the file is rewritten after each prompt). ``lines``: {(server, prefix): (record,
    line)} of the last write, reused for a record that is the same object (records are replaced, never changed)."""
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
    return (f'{{\n "version": {VERSION},\n "servers": {jobs},\n "runs": '
            f'{block(runs, lambda k, run: _dumps(run), " ")}\n}}')
