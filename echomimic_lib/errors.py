"""Exception types. Every message says what is wrong and how to fix it; :func:`as_whole`, the one whole-number
coercion the input checks share; :func:`printable`, a message made safe for a terminal."""
import math
import numbers
import re


class EchoMimicError(ValueError):
    """Base class for user-facing errors (bad input, bad files, missing weights)."""


class WeightsError(EchoMimicError):
    """A weight file is missing, unreadable, unsafe, or does not match the network."""


class MissingWeightsError(WeightsError):
    """One or more weight files are missing; the message lists each with where it was looked for."""

    def __init__(self, message: str, missing: list | None = None):
        super().__init__(message)
        self.missing = list(missing or [])


class NoFaceError(EchoMimicError):
    """No usable face in an image; callers may re-word the fix for their own option (CLI flag, node widget)."""


class UnsafeFileError(EchoMimicError):
    """A pickle-based file would construct objects outside the allow-list (it could run code)."""


class CancelledError(Exception):
    """Raised from a progress callback to stop sampling; not a user error."""


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """``text`` as a terminal may show it: control characters other than newline and tab (an escape sequence in a
    server's answer, a file name or a log line: they could clear the screen, retitle the window or hide what
    precedes them) written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def as_whole(value) -> int | None:
    """``value`` as an int when it is a whole number -- an int, a numpy integer, or a finite float with nothing after
    the point (a linked 7.0 from a math node is 7) -- else None; a bool is not a number here. Every input check that
    takes linked or loaded numbers uses this, then its own range and message."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):  # int, numpy integers
        return int(value)
    if isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():  # float, numpy floats
        return int(value)
    return None
