"""Many clips, many workers: ``echomimic batch`` (manifest, checks, resumable results, local worker processes or
Ray). See :mod:`.runner` for the order of work, :mod:`.manifest` for the manifest and :mod:`.manifest_row` for its
rows, :mod:`.results` for ``results.jsonl`` and the fingerprint, :mod:`.workers` for the embedded engine."""
from .manifest import ManifestError, check_jobs, crossed, read_manifest
from .manifest_row import Job
from .runner import BatchOptions, BatchSummary, run_batch

__all__ = ["Job", "ManifestError", "read_manifest", "crossed", "check_jobs", "BatchOptions", "BatchSummary", "run_batch"]
