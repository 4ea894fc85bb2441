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

Every change is made under an OS lock (:class:`.queue_lock.StateLock`): the lines other runs appended since are read,
and the change is one journal line appended and synced (:mod:`.queue_journal`; the file is compacted, rewritten
atomically, when a run starts and ends and when the journal grows), so runs sharing a folder keep each other's entries
and a run of thousands of jobs costs the same per job as one of ten. A file that is not a queue state (another JSON, a
damaged one) is refused naming it and the fix, never overwritten."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

from . import queue_journal as journal
from .queue_journal import VERSION, load, state_text  # noqa: F401  (importable from here, as before)
from .queue_lock import StateLock, alive, host, process_start
from .queue_plan import build_prompt
from .queue_replies import QueueError

STATE_NAME = ".echomimic_queue.json"


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
    """``{"servers": {url: {prefix: record}}, "runs": {id: run}}`` of the file, its journal applied (empty when there is
    none), or a :class:`QueueError` naming the file and the fix when it is not a queue state."""
    found = load(Path(path))
    return {"servers": found.servers, "runs": found.runs}


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
        self.runs: dict = {}
        self._lines, self._noted = {}, False  # (the document's job lines as last written: state_text)
        self._at = None  # (key, epoch, size, journal lines) of the file as this run last wrote or read it
        if self.path.exists() and not self.path.is_file():  # never replaced: a folder, a fifo, a device
            self._give_up(f"{self.path} is not a regular file")
            return
        self._note(found := load(self.path))
        self.data, self.runs = found.servers, found.runs

    def _note(self, found) -> None:
        said = found.note(self.path)
        if said and not self._noted:
            self._noted = True
            sys.stderr.write(said + "\n")

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
            disk["runs"].clear()
            disk["runs"].update(runs)
        self.claimed = self._update(change)  # (the file compacted: the journal of earlier runs folded in)

    def release(self) -> None:
        """This run is over: its name goes from the file (its records stay, for --resume), which is compacted."""
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
        self.mine.add(prefix)
        self._update(event=journal.job_event(prefix, *(before if before is not None else (None, None))))

    def failed(self, server: str, prefix: str, prompt_id: str, why: str) -> None:
        """This job's prompt failed on the server: said in its record (``--resume --retry-failed`` queues it again)."""
        found = self.find(prefix, [server])
        if found is not None and found[0] == server and found[1].get("prompt_id") == prompt_id:
            self._put(server, prefix, {**found[1], "failed": " ".join(str(why).split())[:300]})

    def _put(self, server: str, prefix: str, rec: dict) -> None:
        self.mine.add(prefix)
        self._update(event=journal.job_event(prefix, server, rec))

    def _update(self, change=None, event=None) -> bool:
        """Under the lock: the changes other runs made since are read (only the lines appended since, when the file is
        as this run left it), then ``event`` (a job's record) is appended to the journal, one line synced to disk; or,
        with ``change`` (which edits the runs: :meth:`claim`, :meth:`release`), for a book used outside a claimed run
        (nothing compacts it at its end), when the file is not as this run left it
        (replaced or removed: this run's jobs are put back as it has them), or when the journal has grown past twice the
        live records, the file is compacted (rewritten atomically, whole)."""
        if not self.ok:
            return False
        from ..errors import EchoMimicError

        try:
            with self.lock:
                whole = self._sync()
                if event is not None:
                    journal.apply_event(self.data, self.runs, event)
                if change is not None:
                    change({"servers": self.data, "runs": self.runs})
                live = sum(len(j) for j in self.data.values()) + len(self.runs)
                if (change is not None or whole or event is None or not self.claimed  # (no run: never compacted at
                        or self._at[3] >= 2 * live + journal.SLACK or not self._append(event)):  # its end, so each time)
                    self._compact()
        except StateInUse:
            raise
        except QueueError as exc:  # (the file was made something else meanwhile: never overwritten)
            self._give_up(str(exc))
            return False
        except (OSError, EchoMimicError) as exc:
            self._give_up(f"{getattr(exc, 'filename', None) or self.path}: {getattr(exc, 'strerror', None) or exc}")
            return False
        return True

    def _sync(self) -> bool:
        """The records and runs of the file as it is now in ``data`` / ``runs``: the journal lines other runs appended
        since this run last wrote, or (True) the whole file when it is not the file this run wrote (another run
        compacted it, it was replaced or removed, or this run has not written yet), this run's jobs kept as it has them."""
        if self._at is not None:
            key, epoch, size, lines = self._at
            tail = journal.read_tail(self.path, key, epoch, size)
            if tail is not None:
                good, bad, torn = journal.apply_lines(tail, self.data, self.runs)
                if bad or torn:
                    self._note(journal.Read({}, {}, None, 0, 0, bad, torn, None))
                self._at = (key, epoch, size + len(tail), lines + good + bad + torn)
                if torn:  # (the next line after a line break of its own)
                    self._at = (*self._at[:3], -1)
                return False
        mine = {p: (s, jobs[p]) for s, jobs in self.data.items() for p in self.mine if p in jobs}
        found = load(self.path)
        self._note(found)
        for jobs in found.servers.values():  # this run's jobs: as this run has them (each on one server)
            for prefix in self.mine:
                jobs.pop(prefix, None)
        for prefix, (server, rec) in mine.items():
            found.servers.setdefault(server, {})[prefix] = rec
        self.data, self.runs = found.servers, found.runs
        return True

    def _append(self, event: dict) -> bool:
        key, epoch, size, lines = self._at
        line = (b"\n" if lines < 0 else b"") + (json.dumps(event) + "\n").encode()  # (ASCII: any name, as it was)
        written = journal.append(self.path, key, size, line)
        if not written:
            return False
        self._at = (key, epoch, size + written, max(lines, 0) + 1)
        return True

    def _compact(self) -> None:
        servers = {s: j for s, j in self.data.items() if j}
        self.data, epoch = servers, journal.new_epoch()
        key, size = journal.compact(self.path, state_text(servers, self.runs, self._lines, epoch))
        self._at = (key, epoch, size, 0)
