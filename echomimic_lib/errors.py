"""Exception types. Every message says what is wrong and how to fix it."""


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
