"""What ``echomimic queue`` has queued, kept on disk so that a run stopped while waiting (Ctrl-C, a closed SSH session)
can be picked up with ``--resume`` instead of queueing every job again.

The file (by default ``.echomimic_queue.json`` in the portraits or videos folder, ``--state FILE`` to choose) holds, per
server and per job prefix, the prompt_id the server accepted, a fingerprint of the prompt sent (so a changed workflow,
seed or input is queued anew, not mistaken for the old prompt) and, once collected, the saved files. It is rewritten
atomically (a temporary file, then ``os.replace``) as each prompt is accepted and as each finishes."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

STATE_NAME = ".echomimic_queue.json"


def fingerprint(prompt: dict) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:16]


def default_path(portraits, videos) -> Path:
    return Path(videos if videos is not None else portraits) / STATE_NAME


class QueueState:
    """The prompts of earlier runs (:meth:`known`) and this run's (:meth:`record`); a file that cannot be read or
    written is said once on stderr and the run goes on without it (queueing never fails for want of it)."""

    def __init__(self, path):
        self.path, self.ok = Path(path), True
        self.data: dict = {}
        if self.path.exists() and not self.path.is_file():  # never replaced: a folder, a fifo, a device
            self._give_up(f"{self.path} is not a regular file")
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            data = {}
            sys.stderr.write(f"warning: {self.path}: unreadable queue state ({type(exc).__name__}); starting a new one.\n")
        servers = data.get("servers") if isinstance(data, dict) else None
        self.data = {s: dict(j) for s, j in servers.items() if isinstance(j, dict)} if isinstance(servers, dict) else {}

    def _give_up(self, why: str) -> None:
        if self.ok:
            sys.stderr.write(f"warning: cannot keep the queue state ({why}); --resume will not find this run (give --state "
                             "FILE in a writable folder).\n")
        self.ok = False

    def known(self, server: str, prefix: str, print_: str) -> dict | None:
        """The earlier record of this job's prompt on ``server`` ({prompt_id, files?}), if it was the same prompt."""
        rec = self.data.get(server, {}).get(prefix)
        if isinstance(rec, dict) and rec.get("fingerprint") == print_ and isinstance(rec.get("prompt_id"), str):
            return rec
        return None

    def record(self, server: str, prefix: str, print_: str, prompt_id: str, files: list[str] | None = None) -> None:
        rec = {"prompt_id": prompt_id, "fingerprint": print_}
        if files is not None:
            rec["files"] = list(files)
        self.data.setdefault(server, {})[prefix] = rec
        self._write()

    def _write(self) -> None:
        if not self.ok:
            return
        text = json.dumps({"version": 1, "servers": self.data}, indent=1, ensure_ascii=False)
        from ..errors import EchoMimicError
        from ..io.file_safety import write_text_atomic

        try:
            write_text_atomic(self.path, text)  # whole or not at all; never onto a folder, device or pipe
        except (OSError, EchoMimicError) as exc:
            self._give_up(f"{self.path}: {getattr(exc, 'strerror', None) or exc}")
