"""``echomimic batch --dry-run``: what a run would do, found as a run finds it, with nothing made, loaded or written.

The same steps as :func:`.runner.run_batch` in the same order, each refusal in the run's words (and so its exit
code): the output folder (:mod:`.outdir`), its lock (another batch writing there: :meth:`.lock.BatchLock.check`),
``results.jsonl``, every row's checks, the finished rows skipped, the folder's videos that no batch wrote, and
``OUTDIR/stale/`` where the earlier videos of rows rendered again would go. Where the run would download (the MediaPipe
face model or DWPose while checking the rows, a weight set's missing files in the workers) the file, where it comes
from and where it would go are listed in the summary (:mod:`echomimic_lib.io.fetch_plan`): no network, nothing written.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .lock import BatchLock
from .outdir import check_results_file
from .plan import check_jobs, weight_downloads
from .results import read_results

log = logging.getLogger(__name__)


def dry_run(jobs: list, outdir: Path):
    from .runner import _sort, refuse_foreign_outputs, set_aside_stale

    if outdir.is_dir():  # (not there yet: the run makes it, empty)
        BatchLock(outdir).check()
        check_results_file(outdir)
    downloads: list = []
    jobs = check_jobs(jobs, downloads)
    summary, _records, todo, bad = _sort(jobs, read_results(outdir))
    if outdir.is_dir():
        refuse_foreign_outputs(todo, outdir)
        summary.stale = set_aside_stale(bad + todo, outdir, move=False)
    for job in bad:
        log.warning("line %d (%s) would fail: %s", job.line, job.name, job.error)
    summary.failed = len(bad)
    summary.downloads = downloads + [f for f in weight_downloads(todo) if f not in downloads]
    return summary
