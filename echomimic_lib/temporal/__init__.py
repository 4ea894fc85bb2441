"""Signals over video time shared by the driving conditions (face landmarks for V1, hand poses for V2).

:mod:`.keypoints`: the One-Euro keypoint filter run forwards and backwards (no lag) and the filling of short
dropouts. It knows nothing of faces or hands; ``landmarks/`` and ``pose/`` pick its settings.
"""

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
