"""One training run per output folder: ``OUTPUT/.echomimic-train.lock`` (``fit`` and ``v3-fit``).

Two runs started on one ``output_dir`` (a second terminal, a job scheduler retrying while the first still runs) both
passed the "already has checkpoints" check while neither had saved yet, then wrote the same ``checkpoints/step-N``
folders over each other, and the second renamed the first's ``train_log.jsonl`` aside while it was being written: the
folder ended with checkpoints of two runs mixed. The run's writer process holds :class:`echomimic_lib.jobs.run_lock.RunLock`
on this file from before it writes anything until it ends; the operating system drops the lock when the process ends,
however it ends, so a killed run never blocks ``--resume``.
"""
from __future__ import annotations

from pathlib import Path

from echomimic_lib.jobs.run_lock import RunLock

LOCK_NAME = ".echomimic-train.lock"


class TrainLock(RunLock):
    what = "training run"
    unlocked = "the run goes on without the lock that keeps a second run out of this output_dir: start only one."

    def __init__(self, out_dir):
        super().__init__(Path(out_dir) / LOCK_NAME)

    def refusal(self, held_by: str) -> str:
        return (f"another echomimic-train run is training into {self.path.parent} {held_by}. Two runs on one output_dir "
                "would write over each other's checkpoints and log: wait for it to finish (or stop it and continue it "
                "with --resume), or choose another output_dir. Nothing was written.")
