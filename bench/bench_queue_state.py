"""Time ``echomimic queue``'s state file for N jobs: the previous way (the whole file rewritten atomically after each
record) against the journal (one line appended and synced per record, :mod:`echomimic_lib.jobs.queue_journal`), side
by side in one run, each job recorded as a run with --wait records it (sent, queued, its files collected).

    python bench/bench_queue_state.py [--jobs 2000] [--dir DIR] [--no-sync]

Prints the seconds, the peak Python memory (tracemalloc) of each and their ratio. ``--dir``: where the files are
written (default: a temporary folder; a real disk, not tmpfs, shows the cost of the journal's fsync per line)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_lib.io.file_safety import write_text_atomic  # noqa: E402
from echomimic_lib.jobs.queue_lock import StateLock  # noqa: E402
from echomimic_lib.jobs.queue_state import QueueState, read_state, state_text  # noqa: E402

SERVER = "http://127.0.0.1:8188"


def _records(i: int):
    pid = f"{i:08d}-0000-4000-8000-000000000000"
    base = {"prompt_id": pid, "fingerprint": "0123456789abcdef", "plan": "0123456789abcdef.0123456789ab"}
    yield {**base, "attempts": 1, "sending": True}
    yield {**base, "attempts": 1}
    yield {**base, "attempts": 1, "files": [f"echomimic/job{i:05d}_00001_.mp4"]}


def full_rewrite(path: Path, jobs: int) -> None:
    """The previous QueueState._update: under the lock, the whole file (cached job lines) rewritten atomically."""
    servers, runs, lines = {SERVER: {}}, {}, {}
    lock = StateLock(path.with_name(path.name + ".lock"))
    for i in range(jobs):
        for rec in _records(i):
            with lock:
                servers[SERVER][f"echomimic/job{i:05d}"] = rec
                write_text_atomic(path, state_text(servers, runs, lines))
                os.stat(path)


def journal(path: Path, jobs: int) -> None:
    book = QueueState(path)
    book.claim(f"echomimic/job{i:05d}" for i in range(jobs))
    for i in range(jobs):
        for rec in _records(i):
            book.record(SERVER, f"echomimic/job{i:05d}", rec["fingerprint"], rec["prompt_id"], rec.get("files"),
                        attempts=1, plan=rec["plan"], sending=rec.get("sending", False))
    book.release()


def measure(fn, path: Path, jobs: int) -> tuple[float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    fn(path, jobs)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--dir", help="folder for the state files (default: a temporary one)")
    p.add_argument("--no-sync", action="store_true", help="the journal without its fsync per line (what it costs "
                   "besides the disk's flush; not how echomimic queue runs)")
    args = p.parse_args(argv)
    if args.no_sync:
        from echomimic_lib.jobs import queue_journal

        queue_journal.os = type("NoSync", (), {"__getattr__": lambda self, name: getattr(os, name),
                                               "fsync": staticmethod(lambda fd: None)})()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        old_s, old_peak = measure(full_rewrite, Path(tmp) / "old.json", args.jobs)
        new_s, new_peak = measure(journal, Path(tmp) / "new.json", args.jobs)
        old, new = read_state(Path(tmp) / "old.json")["servers"], read_state(Path(tmp) / "new.json")["servers"]
        assert old == new, "both ways keep the same records"
    print(f"{args.jobs} jobs, {3 * args.jobs} records (sent, queued, files) in each file:")
    print(f"  full rewrite per record: {old_s:8.2f} s, peak {old_peak / 2**20:6.1f} MiB")
    print(f"  journal ({'append, no fsync' if args.no_sync else 'append+fsync'}):  {new_s:8.2f} s, peak "
          f"{new_peak / 2**20:6.1f} MiB")
    print(f"  ratio (full / journal):  {old_s / new_s:8.1f} x time, {old_peak / max(new_peak, 1):.1f} x peak memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
