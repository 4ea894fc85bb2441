"""The file a command writes, refused before any work: :func:`check_destination` for every command's ``-o`` /
``--preview``, :func:`check_output` for the rendered video of ``echomimic animate``, ``v3`` and ``dub``, and
:class:`OutputClaim`, held while one of them renders it: a second render of the same file is refused
(:class:`ResultClaim`: the same for ``echomimic landmarks`` and ``poses``)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import EchoMimicError
from .run_lock import RunLock

OUTPUT_SUFFIXES = (".mp4", ".m4v", ".mov")


def check_destination(path, flag: str, suffixes: tuple, example: str, inputs: dict | None = None, force: bool | None = None,
                      what: str = "output", needs: str | None = None, others: dict | None = None) -> Path:
    """A file a command writes (animate's ``-o``, ``echomimic landmarks`` ``-o`` / ``--preview``, ``echomimic poses
    --preview``), refused before any work, in this order: a folder, a device or an unwritable place
    (:func:`check_output_path`); one of ``inputs`` ({flag: path}: the result would be renamed over it); the same path
    as one of the command's ``others`` outputs ({flag: path}); an extension not in ``suffixes`` (the message says
    ``needs``, default the list of them, and suggests the name ending in ``example``); an existing file unless
    ``force`` (None: not checked here, the command has its own rule). Each message starts with ``flag``."""
    from ..io.file_safety import refuse_existing, refuse_input_as_output
    from ..io.video_writer import check_output_path

    if str(path).strip() == "-":  # the Unix "to stdout" habit: the result is a file renamed into place, never a stream
        raise EchoMimicError(f"{flag} -: writing to stdout is not supported (the {what} is written under a temporary name "
                             f"and renamed when complete); give a file name, e.g. {flag} out{example}.")
    p = check_output_path(path, flag, "out" + example)  # a folder, a device, an unwritable place: said first
    refuse_input_as_output(p, inputs or {}, flag)
    for other_flag, other in (others or {}).items():
        if other and p.resolve() == Path(other).expanduser().resolve():
            raise EchoMimicError(f"{flag} and {other_flag} are the same path; give each its own name.")
    if p.suffix.lower() not in suffixes:
        raise EchoMimicError(f"{flag} {path}: {needs or 'give it one of the extensions ' + ', '.join(suffixes)}, e.g. {flag} "
                             f"{Path(str(path)).with_suffix(example)}.")
    if force is not None and not force:
        try:
            refuse_existing([p], "--force", what)
        except EchoMimicError as exc:
            raise type(exc)(f"{flag} {exc}") from None
    return p


def check_output(path, inputs: dict | None = None) -> Path:
    """The -o video: a writable place for a new or existing .mp4 file that is none of ``inputs`` ({flag: path})."""
    return check_destination(path, "-o", OUTPUT_SUFFIXES, ".mp4", inputs,  # -o the --audio video: renamed over it
                             needs="the output is an H.264 mp4 video; give it the .mp4 extension")


def claim_file(output: Path) -> Path:
    """The lock file of ``output``'s claim, ``.<name>.lock`` beside it, its extension in lower case: ``a.MOV`` writes
    the same partial files as ``a.mov`` (``.a.<random>.partial.mp4``), so both claim one lock (a batch clearing a
    killed render's partials of row ``a`` sees a live render to either)."""
    from ..io.file_safety import temp_prefix

    return output.parent / f"{temp_prefix(output.stem + output.suffix.lower())}lock"


class OutputClaim(RunLock):
    """``with OutputClaim(output):`` one render per output file, held from the end of the checks to the end of the
    render (also on an error or Ctrl-C): the OS lock of :class:`.run_lock.RunLock` on ``.<name>.lock`` beside the file
    (beside a symlink's target). A second ``animate`` / ``dub`` / ``v3`` on the same ``-o`` is refused naming the first
    (the last one to finish would silently win, and with ``--resumable`` both would keep their state in the same
    ``OUTPUT.resume``); a claim left by a process that is gone (killed -9) is taken over. A missing folder of the output
    is made for the lock file, and removed again if nothing was written into it (also by a Ctrl-C that ends the process
    without waiting for the render: :func:`..io.file_safety.remove_partials`)."""

    what = "render"
    unlocked = ("two renders to this output at once would overwrite each other (and share its --resumable state): start "
                "only one.")

    def __init__(self, output):
        from ..io.file_safety import regular_target
        from ..io.video_writer import check_output_path

        self.output = regular_target(check_output_path(output, "-o"))
        self._made: list = []
        super().__init__(claim_file(self.output))

    def refusal(self, held_by: str) -> str:
        return (f"-o {self.output}: another render is writing this file {held_by}. Two renders of one output would "
                "overwrite each other's video, and with --resumable share its kept state: give this one another -o, or "
                "wait for that one to finish (or stop it); --force does not override a running render. The claim "
                f"({self.path.name} beside the output) is an operating-system lock: it goes when that process ends, "
                "however it ends.")

    def acquire(self) -> OutputClaim:
        from ..io.file_safety import make_folders, remove_folders, track_folders, track_partial, untrack_folders

        track_folders(self._made)  # (before any is made: an interrupt in between loses none)
        make_folders(self.output.parent, self._made)
        try:
            super().acquire()
        except BaseException:
            remove_folders(self._made)
            untrack_folders(self._made)
            raise
        track_partial(self.path)  # a Ctrl-C that ends the process without waiting for the render removes it too
        return self

    def release(self) -> None:
        from ..io.file_safety import remove_folders, untrack_folders, untrack_partial

        untrack_partial(self.path)
        try:
            super().release()
        finally:
            remove_folders(self._made)  # (each only while empty: a written output keeps its folder)
            untrack_folders(self._made)
            self._made = []


class ResultClaim(OutputClaim):
    """:class:`OutputClaim` for the files of ``echomimic landmarks`` and ``echomimic poses`` (``-o``, ``--preview``;
    ``folder``: a released pose folder, claimed by a lock file beside it): a second run writing the same output is
    refused before any model loads, naming the first (with ``--force`` both would replace it, and with ``--preview``
    one run's ``-o`` could be left beside the other's preview). The same lock file as a render's: an ``animate -o X.mp4``
    still rendering refuses a ``--preview X.mp4`` too."""

    what = "run"
    unlocked = "two runs writing this output at once would replace each other's files: start only one."

    def __init__(self, output, flag: str = "-o", folder: bool = False):
        from ..io.file_safety import regular_target
        from ..io.video_writer import check_output_path

        self.flag = flag
        if folder:  # (a link named as a pose folder is itself replaced, not written through: the lock beside it)
            self.output = Path(output).expanduser()
        else:
            self.output = regular_target(check_output_path(output, flag))
        self._made = []
        RunLock.__init__(self, claim_file(self.output))

    def refusal(self, held_by: str) -> str:
        return (f"{self.flag} {self.output}: another run is writing this output {held_by}. Two runs of one output would "
                f"replace each other's files: give this one another {self.flag}, or wait for that one to finish (or stop "
                f"it); --force does not override a running run. The claim ({self.path.name} beside the output) is an "
                "operating-system lock: it goes when that process ends, however it ends.")


def claim_results(outputs) -> contextlib.ExitStack:
    """``with claim_results([(path, flag, folder), ...]):`` a :class:`ResultClaim` on each output given (None: none)."""
    stack = contextlib.ExitStack()
    try:
        for path, flag, folder in outputs:
            if path is not None:
                stack.enter_context(ResultClaim(path, flag, folder))
    except BaseException:
        stack.close()
        raise
    return stack
