"""Downloads only planned, never made: ``echomimic batch --dry-run`` says what a run would download.

Inside :func:`planning`, every download this package would start (the MediaPipe face model, DWPose's ONNX files, the
Hugging Face weight sets) is recorded instead (which file, from where, to where) and none is made: no network, no
folder made, nothing written. The downloaders ask :func:`planned` first; outside :func:`planning` it says False and
they download as before.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

_PLANNED: ContextVar[list | None] = ContextVar("echomimic_planned_downloads", default=None)


@contextmanager
def planning():
    """``with planning() as found:`` the downloads met inside are listed in ``found`` (dicts: file, from, to), not made."""
    found: list = []
    token = _PLANNED.set(found)
    try:
        yield found
    finally:
        _PLANNED.reset(token)


def is_planning() -> bool:
    return _PLANNED.get() is not None


def planned(name: str, source: str, dest) -> bool:
    """True while planning: the download of ``name`` from ``source`` into ``dest`` is recorded (once) and must not be
    made; False otherwise (download it)."""
    found = _PLANNED.get()
    if found is None:
        return False
    entry = {"file": str(name), "from": str(source), "to": str(dest)}
    if entry not in found:
        found.append(entry)
    return True
