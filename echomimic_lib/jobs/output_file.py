"""The file a command writes, refused before any work: :func:`check_destination` for every command's ``-o`` /
``--preview``, :func:`check_output` for the rendered video of ``echomimic animate``, ``v3`` and ``dub``."""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError

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

    p = check_output_path(path, flag)  # a folder, a device, an unwritable place: said first
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
