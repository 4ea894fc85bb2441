"""Opening a media file (a clear error for a missing or unreadable one) and which of its streams is its video: cover
art (an audio file's picture) is none."""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError


class NoVideoStream(EchoMimicError):
    """The file is media without a video stream (an audio file, say, cover art included)."""


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
    raise NoVideoStream(f"{path or container.name}: the file has no video stream{cover}.")


def open_media(path: str | Path):
    """An open PyAV container of ``path``, or a clear error: missing, or not media."""
    import av

    path = Path(path)
    if not path.is_file():
        raise EchoMimicError(f"{path}: file not found.")
    try:
        return av.open(str(path))
    except Exception as exc:
        from .os_errors import is_os_refusal, os_error_text

        if is_os_refusal(exc):  # it exists but the system will not open it: not a damaged file
            raise EchoMimicError(os_error_text(exc, path, "read")) from exc
        raise EchoMimicError(f"{path}: cannot be opened as a media file ({getattr(exc, 'strerror', None) or exc}); it is damaged or "
                             "not audio/video: use a wav, mp3, flac, m4a or mp4 file.") from exc
