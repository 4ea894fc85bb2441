"""Rules every written file follows: nothing a user owns is replaced unless asked, and a finished file gets
the permissions the user's umask gives a new file (not the 0600 of a temporary file).

- :func:`refuse_existing` raises before any work when a destination already exists (the message names the
  file and the flag that allows replacing it, ``--force`` on the command line).
- :func:`publish` moves a finished temporary file into place with the umask's mode; :func:`publish_all` moves
  several together, all or none (an interrupt in between puts back what was there).
- :func:`disk_full` tells a full disk (``ENOSPC``/``EDQUOT``) from other write errors.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from ..errors import EchoMimicError

DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class ExistingFileError(EchoMimicError):
    """A destination already exists and replacing it was not asked for."""


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode ``open()`` would give a new regular file: 0666 less the umask."""
    return 0o666 & ~current_umask()


def regular_target(path: str | Path) -> Path:
    """Where a file written to ``path`` lands: a symlink is followed (the link stays, its target gets the new contents);
    an existing folder, device, pipe or socket is refused with :class:`ExistingFileError` (never replaced)."""
    p = Path(path)
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    try:
        mode = os.stat(p).st_mode
    except OSError:  # not there yet (or its folder is not): the write itself says what is wrong
        return p
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device, pipe or socket)"
        raise ExistingFileError(f"{p} is {kind} and is never replaced; choose the name of a new or existing file.")
    return p


def resolved_outside(root: str | Path, path: str | Path) -> Path | None:
    """Where ``path`` really is when links take it out of ``root`` (its resolved path), else None (inside, or ``root``
    itself). OSError / RuntimeError (a link loop before Python 3.13) are the caller's to report."""
    real_root, real = Path(root).resolve(), Path(path).resolve()
    return None if real == real_root or real_root in real.parents else real


def _give_new_file_mode(tmp) -> None:
    try:
        os.chmod(tmp, new_file_mode())
    except OSError:  # a file system without permission bits (some network or FAT mounts): keep what it gives
        pass


def publish(tmp: str | Path, final: str | Path) -> Path:
    """Give ``tmp`` the umask's permissions, then rename it to ``final`` (atomic on one file system); a symlink at
    ``final`` is written through, a folder, device or pipe there is never replaced (:func:`regular_target`)."""
    target = regular_target(final)
    _give_new_file_mode(tmp)
    from .os_errors import writing

    with writing(final):  # the user's name in the error, not the temporary file's (removed by the caller)
        os.replace(tmp, target)
    return Path(final)


def publish_absent(tmp: str | Path, final: str | Path, what: str, flag: str) -> Path:
    """Like :func:`publish`, for a destination that was free when the command started (no ``--force``): anything that
    appeared at ``final`` since (a file, a folder, a symlink: never written through) is kept and
    :func:`refuse_appeared` raises. The check and the move are one atomic step where the file system has hard links
    (``os.link`` fails on an existing name); elsewhere a check just before the rename."""
    _give_new_file_mode(tmp)
    from .os_errors import writing

    refuse_appeared(final, what, flag)
    try:
        os.link(tmp, final)
    except FileExistsError:
        refuse_appeared(final, what, flag)
        raise
    except OSError:  # no hard links here (FAT, some network mounts): checked just above, then renamed
        with writing(final):
            os.replace(tmp, final)
        return Path(final)
    os.unlink(tmp)
    return Path(final)


def publish_new(tmp: str | Path, final: str | Path, next_name, tries: int = 1000) -> Path:
    """Like :func:`publish`, but never onto an existing name: when another writer took ``final`` since it was chosen (a
    second ComfyUI sharing the output folder, the same workflow run twice at once), ``next_name()`` gives the next free
    numbered name and that one is taken. Atomic where the file system has hard links (``os.link`` fails on an existing
    name); elsewhere a check just before the rename. Returns the name the file got."""
    _give_new_file_mode(tmp)
    final = Path(final)
    for _ in range(tries):
        try:
            os.link(tmp, final)
        except FileExistsError:
            final = Path(next_name())
            continue
        except OSError:  # no hard links here (FAT, some network mounts): check, then rename
            if os.path.lexists(final):
                final = Path(next_name())
                continue
            os.replace(tmp, final)
            return final
        os.unlink(tmp)
        return final
    raise EchoMimicError(f"{final}: no free numbered name after {tries} tries (the folder keeps filling); choose another "
                         "filename_prefix.")


def publish_all(staged) -> list[Path]:
    """Move finished temporary files into place together: ``staged`` is ``[(temporary file, destination), ...]``. An
    existing destination (replacing it was asked for) is kept aside until every file is in place; when a move fails or
    is interrupted, the files moved are taken back and those kept aside restored. The caller removes the temporary
    files left (on any failure)."""
    moved: list[tuple[Path, Path, Path | None]] = []  # (temporary file, where it lands, the old file's place aside)
    try:
        for tmp, final in staged:
            target = regular_target(final)
            aside = temp_beside(final, ".replaced") if os.path.lexists(target) else None
            moved.append((Path(tmp), target, aside))
            if aside is not None:
                os.replace(target, aside)
            publish(tmp, final)
    except BaseException:
        for tmp, target, aside in reversed(moved):
            _take_back(tmp, target, aside)
        raise
    for _, _, aside in moved:
        if aside is not None:
            aside.unlink(missing_ok=True)
    return [Path(final) for _, final in staged]


def _take_back(tmp: Path, target: Path, aside: Path | None) -> None:
    """Undo one step of :func:`publish_all`, told by what exists (each rename is atomic): the temporary file gone means
    it was published; the destination gone (temporary file still there) means the old file was moved aside."""
    try:
        published = not tmp.exists()
        if published or not os.path.lexists(target):
            if aside is not None:
                os.replace(aside, target)  # the old file back (over ours, when ours was already in place)
            elif published:
                target.unlink(missing_ok=True)
        elif aside is not None:
            aside.unlink(missing_ok=True)  # nothing moved yet: only the empty place kept for it
    except OSError:  # the interrupt or failure is what is reported; leave what cannot be undone
        pass


def make_folders(folder: str | Path, made: list) -> list:
    """Create ``folder`` and its missing parents, each appended to ``made`` as soon as it is created (an interrupt
    in between loses none; for :func:`remove_folders`). One that another process creates meanwhile is not counted."""
    missing, p = [], Path(folder)
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        made.append(d)
    return made


def remove_folders(made) -> None:
    """Remove folders :func:`make_folders` created, innermost first, each only while it is empty."""
    for d in reversed(list(made)):
        try:
            d.rmdir()
        except OSError:  # not empty (something else wrote there) or already gone: left as it is
            pass


def write_text_atomic(final: str | Path, text: str) -> Path:
    """``text`` as ``final``, whole or not at all: a unique temporary file beside it (:func:`temp_beside`), then
    :func:`publish`; the temporary file is removed on any failure."""
    from .os_errors import writing

    tmp = temp_beside(final)
    try:
        with writing(final):
            tmp.write_text(text, encoding="utf-8")
        return publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


TEMP_NAME_BYTES = 96  # of a destination's name kept in its temporary file's name (file systems allow 255 bytes in all)


def temp_prefix(name: str) -> str:
    """``.<name>.``, the start of a temporary file's name for the destination ``name``: a name longer than
    :data:`TEMP_NAME_BYTES` bytes is cut (whole characters) and ends with ``~`` and a hash of the whole name, so that a
    destination whose own name fits the file system's limit never fails for its temporary file's longer one
    (``File name too long``), and two long names that start alike keep different prefixes."""
    raw = os.fsencode(name)
    if len(raw) <= TEMP_NAME_BYTES:
        return f".{name}."
    import hashlib

    cut = raw[:TEMP_NAME_BYTES]
    while cut:
        try:
            cut.decode("utf-8")
            break
        except UnicodeDecodeError:  # a character cut in two
            cut = cut[:-1]
    return f".{os.fsdecode(cut)}~{hashlib.sha1(raw).hexdigest()[:8]}."


def temp_beside(final: str | Path, suffix: str = ".partial") -> Path:
    """A new, empty temporary file of a unique name (``.<stem>.XXXXXXXX<suffix>``, hidden) in the folder where a file
    written to ``final`` lands (beside a symlink's target, so :func:`publish` renames on one file system). Two writers
    of one destination never share it; the caller writes it, then publishes it or unlinks it on any failure."""
    target = regular_target(final)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temp_prefix(target.stem), suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def temp_folder_beside(final: str | Path, suffix: str = ".partial") -> Path:
    """A new, empty folder of a unique name (``.<name>.XXXXXXXX<suffix>``, hidden) beside the folder ``final``, with the
    permissions the umask gives a new folder (not the 0700 of a temporary one): two writers of one destination never
    share it; the caller fills it, then renames it to ``final`` or removes it on any failure."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), suffix=suffix, dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError:  # a file system without permission bits: keep what it gives
        pass
    return tmp


def refuse_existing(paths, flag: str = "--force", what: str = "weight file") -> None:
    """Raise :class:`ExistingFileError` when any of ``paths`` exists (a file, folder or link)."""
    found = [Path(p) for p in paths if os.path.lexists(p)]
    if not found:
        return
    shown = ", ".join(str(p) for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise ExistingFileError(f"{shown} already exist{'s' if len(found) == 1 else ''}; this would replace {'it' if len(found) == 1 else 'them'}"
                            f" (an existing {what} is never overwritten silently). Choose another destination, move the "
                            f"file{'s' if len(found) > 1 else ''} away, or add {flag} to replace {'it' if len(found) == 1 else 'them'}.")


def refuse_appeared(path, what: str, flag: str = "-o") -> None:
    """Just before a result is moved to ``path``, which was not there (or ``--force`` was not given) when the command
    started: a file that appeared since (the same command run twice at once, in two terminals) is kept, as the start's
    check would have kept it, instead of being replaced by the rename."""
    if os.path.lexists(path):
        raise ExistingFileError(f"{flag} {path} appeared while this command ran (another run writing the same output?); "
                                f"the {what} there is kept and this result was not written. Give another {flag}, or add "
                                "--force to replace it.")


def refuse_input_as_output(output, inputs: dict, out_flag: str = "-o") -> None:
    """Raise when ``output`` is the same file as one of ``inputs`` (``{flag: path or None}``), through links too:
    the finished file would be renamed over that input and it would be lost."""
    if output is None or not os.path.lexists(output):
        return
    for flag, src in inputs.items():
        if not src:
            continue
        try:
            same = os.path.samefile(output, src)
        except OSError:  # an input that is not there (its own check says so), or a dangling link
            continue
        if same:
            raise EchoMimicError(f"{out_flag} {output} is the same file as {flag} {src}: writing the result would replace "
                                 f"that input and it would be lost. Choose another {out_flag} name.")


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (exc.errno in DISK_FULL or getattr(exc, "os_errno", None) in DISK_FULL)


# ------------------------------------------------------------------------------------------ partial files
_PENDING: set[Path] = set()


def track_partial(path: str | Path) -> None:
    """Record a temporary file that is not yet in place (a video being encoded), so an interrupt that cannot wait
    for the work in flight can still remove it (:func:`remove_partials`)."""
    _PENDING.add(Path(path))


def untrack_partial(path: str | Path | None) -> None:
    if path is not None:
        _PENDING.discard(Path(path))


_MADE_FOLDERS: list[list] = []


def track_folders(made: list) -> None:
    """Record ``made``, the list :func:`make_folders` fills (an output's folders made by this run), so that an
    interrupt that cannot wait for the work in flight still removes those left empty (:func:`remove_partials`)."""
    if not any(m is made for m in _MADE_FOLDERS):
        _MADE_FOLDERS.append(made)


def untrack_folders(made: list) -> None:
    _MADE_FOLDERS[:] = [m for m in _MADE_FOLDERS if m is not made]


def remove_partials() -> list[Path]:
    """Delete every recorded temporary file, then the recorded folders this run made that are left empty (a folder
    that holds anything, or was there before, is kept); returns the files removed."""
    try:
        return _remove_partial_files()
    finally:
        for made in reversed(list(_MADE_FOLDERS)):
            remove_folders(made)


def _remove_partial_files() -> list[Path]:
    removed = []
    for p in list(_PENDING):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError:
            continue
        _PENDING.discard(p)
    return removed


# ------------------------------------------------------------------------------------------ kept on an interrupt
_KEEPERS: list = []


def keep_on_interrupt(fn) -> None:
    """Record ``fn()``: work worth writing before an interrupt ends the process without waiting for the work in
    flight (a resumable render's last finished step, :mod:`echomimic_lib.pipeline.resume`); see :func:`run_keepers`."""
    _KEEPERS.append(fn)


def forget_keeper(fn) -> None:
    if fn in _KEEPERS:
        _KEEPERS.remove(fn)


def run_keepers() -> None:
    """Run every recorded keeper once (each catches its own errors: an interrupt must still end the process)."""
    for fn in list(_KEEPERS):
        forget_keeper(fn)
        try:
            fn()
        except Exception:  # noqa: BLE001 - the interrupt is what matters now
            pass
