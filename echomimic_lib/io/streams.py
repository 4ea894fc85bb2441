"""Opening a media file (a clear error for a missing or unreadable one) and which of its streams is its video: cover
art (an audio file's picture) is none."""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError


class NoVideoStream(EchoMimicError):
    """The file is media without a video stream (an audio file, say, cover art included); :attr:`kinds`: the kinds of
    stream it holds ("audio", "subtitle", "data", ...)."""

    def __init__(self, message: str, kinds=()):
        super().__init__(message)
        self.kinds = frozenset(kinds)


def video_stream(container, path=None, required: bool = True):
    """The first video stream of an open container that is not cover art (an mp3's, m4a's or flac's picture, a stream
    with disposition attached_pic): an audio file with a cover is audio. None, or with ``required``
    :class:`NoVideoStream`, where there is none."""
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if not required:
        return None
    cover = " (only a cover picture: an audio file)" if container.streams.video else ""
    raise NoVideoStream(f"{path or container.name}: the file has no video stream{cover}.", _kinds(container))


def _kinds(container) -> set:
    """The kinds of stream an open container holds ("audio", "subtitle", "data", ...)."""
    try:
        return {str(stream.type) for stream in container.streams}
    except TypeError:  # a container-like object that does not list its streams
        return set()


def open_media(path: str | Path):
    """An open PyAV container of ``path``, or a clear error: missing, or not media."""
    import av

    path = Path(path)
    if not path.is_file():
        from .os_errors import missing_text

        raise EchoMimicError(f"{path}: {missing_text(path)}.")
    try:
        return av.open(str(path))
    except Exception as exc:
        from .os_errors import refused

        if err := refused(exc, path):  # it exists but the system will not open it: not a damaged file
            raise err from exc
        if _mp4_without_index(path):
            raise EchoMimicError(f"{path}: an MP4/MOV/M4A file without its index (no 'moov' box): the recording was "
                                 "interrupted, or the file was copied or downloaded only in part; copy it again from "
                                 "the original.") from exc
        raise EchoMimicError(f"{path}: cannot be opened as a media file ({getattr(exc, 'strerror', None) or exc}); it is damaged or "
                             "not audio/video: use a wav, mp3, flac, m4a or mp4 file.") from exc


def _mp4_without_index(path: Path) -> bool:
    """Whether ``path`` starts as an ISO media file (an ``ftyp`` box) whose top-level boxes hold no ``moov`` (the index
    a camera writes last, or that a cut copy lost); the box headers only are read."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        pos = 0
        for n in range(10_000):
            fh.seek(pos)
            head = fh.read(16)
            if len(head) < 8 or (n == 0 and head[4:8] != b"ftyp"):
                return n > 0
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if kind == b"moov":
                return False
            if length == 1 and len(head) == 16:
                length = int.from_bytes(head[8:16], "big")
            if length == 0 or pos + length >= size:
                return True  # the last box (or one running past the end of a cut file): no moov
            if length < 8:
                return False  # no box: not an ISO file the way it starts
            pos += length
    return False
