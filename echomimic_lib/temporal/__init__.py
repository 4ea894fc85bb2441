"""Signals over video time shared by the driving conditions (face landmarks for V1, hand poses for V2).

:mod:`.keypoints`: the One-Euro keypoint filter run forwards and backwards (no lag) and the filling of short
dropouts. It knows nothing of faces or hands; ``landmarks/`` and ``pose/`` pick its settings.
"""
import logging

log = logging.getLogger(__name__)

# ``--stabilize`` / the nodes' ``stabilize`` widget: how hard the driving keypoints are steadied. "off" (the default)
# keeps the detector's output exactly (parity); landmarks/ and pose/ map each other level to their own settings.
STABILIZE_LEVELS = ("off", "light", "medium", "strong")
STABILIZE_DEFAULT = "off"


def check_level(level, flag: str = "--stabilize") -> str:
    """``level`` when it is one of :data:`STABILIZE_LEVELS`, else an error naming ``flag`` (the option or widget)."""
    if level not in STABILIZE_LEVELS:
        from ..errors import EchoMimicError

        raise EchoMimicError(f"{flag} {level!r}: use one of {', '.join(STABILIZE_LEVELS)} (default {STABILIZE_DEFAULT}: "
                             "the detector's keypoints as they are).")
    return level


def saved_stabilized(value, where) -> str:
    """The level a saved sequence file records it was steadied at (``stabilized`` in its metadata; absent in files
    written before it was recorded, and in unsteadied ones: ``"off"``)."""
    if value is None:
        return "off"
    if value not in STABILIZE_LEVELS:
        from ..errors import EchoMimicError

        raise EchoMimicError(f"{where}: the file says it was stabilized at {value!r}, not one of "
                             f"{', '.join(STABILIZE_LEVELS)}; write it again (echomimic landmarks / echomimic poses).")
    return value


def skip_second_pass(saved: str, level: str, name: str, redo: str, flag: str = "--stabilize") -> bool:
    """True, after one warning, when a sequence saved already steadied (at ``saved``) is asked to be steadied again
    at ``level``: the second pass is skipped, whatever the two levels (smoothing twice blurs speech and gestures
    more than either level, and a stronger level on top is not that level either). ``redo``: how to steady it at
    another level (save it again at that level, or unsteadied)."""
    if level == "off" or saved in (None, "off"):
        return False
    log.warning("%s was saved already stabilized at '%s'; %s %s is not applied a second time (the points are used as "
                "saved). To steady them at another level, %s.", name, saved, flag, level, redo)
    return True
