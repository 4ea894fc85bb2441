"""The rows' own checks, for a whole batch at once (no weights): each shared input read and hashed once, no samples kept.

Thousands of rows often share a few portraits and recordings: every row's checks decoded them again (a 5,000-row
manifest on one portrait decoded it 5,000 times before the first frame, and hashed it 5,000 times). :class:`PlanReads`
gives :func:`echomimic_lib.jobs.animate_checks.preflight` readers that do the real read (every check of
``read_reference`` / ``read_speech``) the first time a file is met, and remember only its outcome: the error it
raised, or the shapes. Later rows get arrays of the right shape that hold no memory (``np.broadcast_to`` of one
zero), which is all the plan keeps of them (the batch drops the plan's arrays; workers read their inputs again). A
file is known by its resolved path, size and modification time, so one changed meanwhile is read again. A warning
that every row repeats word for word (a smoke run's missing face model) is said once, with a count at the end.
EchoMimicV3 rows are planned as before (their plan uses the samples).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from dataclasses import replace

from ...errors import EchoMimicError
from .lora_columns import lora_key
from .results import fingerprint
from .v3 import is_v3

log = logging.getLogger(__name__)


def check_jobs(jobs: list, downloads: list | None = None) -> list:
    """The job's own checks for every row (no weights): fills ``weight_key``, ``frames``, ``fingerprint``, or
    ``error`` for a row whose inputs are unusable. ``downloads`` (a dry run): the files these checks would download
    (the MediaPipe face model, DWPose) are added to it instead (:mod:`echomimic_lib.io.fetch_plan`); none is fetched.
    Each row's own are also its ``downloads`` (a dry run lists only those of the rows that would render: a row already
    done or failing up front downloads nothing)."""
    from ...io.fetch_plan import planning

    out, digests, reads = [], {}, PlanReads()  # an input shared by many rows is read and hashed once
    with said_once():
        for job in jobs:
            with (planning() if downloads is not None else nullcontext()) as found:
                try:
                    job.weight_key, job.frames = _plan(job, reads)
                    if not is_v3(job) and not job.request.download and not getattr(job.request, "smoke", False):
                        reads.weights(*job.weight_key[:3])  # --offline: a set lacking files is an error row now, not in a worker
                except EchoMimicError as exc:
                    job.error = str(exc)
            job.fingerprint = fingerprint(job, digests)
            if downloads is not None:
                job.downloads = tuple(found)
                downloads.extend(f for f in found if f not in downloads)
            out.append(job)
    return out


def weight_downloads(todo: list) -> list:
    """The files the workers would download for the rows to render (their weight sets' missing files: file, from, to),
    once per set; nothing fetched (a dry run). A set wrong in another way (an unreadable weight index) makes each of
    its rows an error row (``job.error``, as the run's workers would fail them), so every row's problem is said."""
    from ...errors import MissingWeightsError
    from ...io.fetch_plan import planning
    from ...model_set import ensure_v3, ensure_weights

    seen, out = {}, []
    for job in todo:
        req = job.request
        if getattr(req, "smoke", False) or not getattr(req, "download", False):  # tiny weights made / --offline: none
            continue
        key = ("v3", str(req.folder)) if is_v3(job) else tuple(job.weight_key[:3])
        if key not in seen:
            seen[key] = None
            with planning() as found:
                try:
                    ensure_v3(req.folder) if is_v3(job) else ensure_weights(*key)
                except MissingWeightsError:
                    pass  # (what is missing was said into ``found``: nothing was fetched, so it is still missing)
                except EchoMimicError as exc:
                    seen[key] = str(exc)
            out.extend(f for f in found if f not in out)
        if seen[key]:
            job.error = seen[key]
    return out


def _plan(job, reads) -> tuple[tuple, int]:
    req = job.request
    if is_v3(job):
        from .v3 import plan_v3_row

        return plan_v3_row(job)
    if job.kind == "animate":
        from ..animate_checks import preflight

        plan = preflight(req, reads.readers)
        job.request = replace(req, mediapipe_model=plan.request.mediapipe_model, face_crop=plan.request.face_crop)
        key = (str(plan.models_root), plan.mode.weights, plan.variant, req.dtype, *lora_key(req),
               req.fp8, req.low_vram, req.smoke) + _compiled(req)
        return key, int(plan.settings.num_frames)
    from ..dub import _validate

    ok = _validate(req)
    if req.audio is not None:
        reads.speech(req.audio)
    return (str(ok.root), "v1_pose", ok.variant, req.dtype, "", 1.0, False, False, False) + _compiled(req), int(req.length or 0)


def _compiled(req) -> tuple:
    """Compiled networks are other networks to keep loaded; the key stays as before without compile (a rerun of an
    older batch finds its rows done: the key is part of the fingerprint)."""
    return ("compiled",) if req.compile else ()


class _Once(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set = set()
        self.dropped = 0  # records, not handler calls

    def filter(self, record) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith("echomimic_lib"):
            return True
        said = getattr(record, "_echomimic_once", None)  # one record, several handlers: one decision
        if said is None:
            key = (record.levelno, record.getMessage())
            said = key not in self.seen
            self.seen.add(key)
            self.dropped += not said
            record._echomimic_once = said
        return said


@contextmanager
def said_once():
    """While planning: a warning of ours said again word for word is dropped (on the root logger's handlers, where
    the command line's console handler is), then counted once."""
    once, handlers = _Once(), list(logging.getLogger().handlers)
    for h in handlers:
        h.addFilter(once)
    try:
        yield once
    finally:
        for h in handlers:
            h.removeFilter(once)
        if once.dropped:
            log.warning("(%d repeated warning(s) of the rows' checks not shown again)", once.dropped)


def _identity(path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing: the real reader says so
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _hollow(shape, dtype):
    import numpy as np

    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


class PlanReads:
    def __init__(self):
        self.memo: dict = {}
        self.reads = 0  # real reads (tests)

    def _once(self, key, read, keep):
        if key[1] is None:
            self.reads += 1
            return read()
        if key not in self.memo:
            self.reads += 1
            try:
                self.memo[key] = ("ok", keep(read()))
            except EchoMimicError as exc:
                self.memo[key] = ("error", exc)
        kind, value = self.memo[key]
        if kind == "error":
            raise value.with_traceback(None)
        return value()

    def reference(self, path):
        from ..reference_input import read_reference

        def keep(image):
            shape, dtype = image.shape, image.dtype
            return lambda: _hollow(shape, dtype)

        return self._once(("reference", _identity(path)), lambda: read_reference(path), keep)

    def speech(self, path, fps=None, length=None):
        from ..speech_input import read_speech

        def keep(result):
            wav, sr, raw = result
            shapes = (wav.shape, wav.dtype, sr, raw.samples.shape, raw.samples.dtype)
            bare = replace(raw, samples=None)  # its rate (and a long track's start: its whole-track facts), not its samples
            return lambda: (_hollow(shapes[0], shapes[1]), shapes[2], replace(bare, samples=_hollow(shapes[3], shapes[4])))

        return self._once(("speech", _identity(path), fps, length), lambda: read_speech(path, fps, length), keep)

    def weights(self, root, weights: str, variant: str) -> None:
        """The weight set's files are there (an --offline row: the worker would fail on them); once per set."""
        from ...io import model_files

        self._once(("weights", (str(root), weights, variant)),
                   lambda: model_files.resolve_files(root, weights, variant), lambda _files: lambda: None)

    @property
    def readers(self) -> tuple:
        """(reference, speech) as :func:`preflight`'s ``reads``."""
        return self.reference, self.speech
