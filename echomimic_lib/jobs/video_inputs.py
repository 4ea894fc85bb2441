"""The videos the commands read besides the speech: ``dub --video``, ``animate --landmarks VIDEO``, ``echomimic
landmarks VIDEO``. Checked with PyAV only (no model, no MediaPipe), so that a text file, a sound file, an empty file
or a still picture given where a video belongs is named with its option and the fix before anything loads."""
from __future__ import annotations

from pathlib import Path

from ..errors import EchoMimicError

LANDMARK_SOURCES = ("a driving video of a face, a FILE.npz/.json saved by `echomimic landmarks VIDEO -o FILE.npz`, or a "
                    "folder of V1 .pkl landmark frames")


def _reason(exc: Exception, path: Path) -> str:
    """The reader's words without the file name in front and its own advice behind (it names audio formats)."""
    text = str(exc)
    for prefix in (f"{path}: ", f"{str(path)}: "):
        text = text.removeprefix(prefix)
    return text.split("; it is damaged")[0].rstrip(".")


def _is_text(path: Path) -> bool:
    """The file's first KiB is readable text (notes, a subtitle, a list of files), not a binary media file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):  # (a character cut at the 1 KiB mark reads as binary: only the advice differs)
        return False
    return bool(head) and b"\0" not in head


def check_video_input(path, flag: str, fix: str, upto: int = 1) -> int:
    """How many video frames ``path`` has, counted up to ``upto``; anything that is no video refused as
    ``"{flag} {path}: {problem}; {fix}"``."""
    from ..io.video_io import NoVideoStream, count_frames

    p = Path(path)
    if p.is_dir():
        problem = "is a folder, not a video"
    elif not p.is_file():
        from ..io.os_errors import missing_text

        problem = missing_text(p)
    elif p.stat().st_size == 0:
        problem = "the file is empty (0 bytes)"
    else:
        cover, kinds = "", {"audio"}
        try:
            frames = count_frames(p, upto)
        except NoVideoStream as exc:  # a song's cover art is no video frame
            frames, cover = 0, ": it has only a cover picture" if "only a cover picture" in str(exc) else ""
            kinds = exc.kinds - {"video"}
        except EchoMimicError as exc:
            what = ": it is a text file, not a video" if _is_text(p) else ""
            raise EchoMimicError(f"{flag} {p}: {_reason(exc, p)}{what}; {fix}") from None
        if frames:
            return frames
        problem = (f"no video frames (an audio file?){cover}" if "audio" in kinds else
                   "no video stream (a subtitle file: it holds only subtitles)" if kinds == {"subtitle"} else
                   f"no video stream (it holds only {' and '.join(sorted(kinds))} streams)" if kinds else
                   "no video stream (no stream at all)")
    raise EchoMimicError(f"{flag} {p}: {problem}; {fix}")


def check_landmark_source(path) -> None:
    """``animate --landmarks``: a saved sequence is read whole here; a single V1 .pkl frame, or anything that is not a
    video of at least two frames (a still picture drives a frozen face: most often the portrait given to the wrong
    option), is refused. A folder is read (and its .pkl frames checked) with the condition."""
    from ..landmarks.io import is_sequence_file, load_driver_sequence

    p = Path(path)
    if p.is_dir():
        return
    if is_sequence_file(p):  # saved by `echomimic landmarks VIDEO`: read and checked before MediaPipe and the weights
        load_driver_sequence(p)
        return
    if p.suffix.lower() == ".pkl":
        raise EchoMimicError(f"--landmarks {p} is one V1 landmark frame; give the folder that holds the frames "
                             f"(--landmarks {p.parent}: 0.pkl, 1.pkl, ...), a driving video or a saved FILE.npz/.json.")
    if check_video_input(p, "--landmarks", f"give {LANDMARK_SOURCES}.", upto=2) < 2:
        raise EchoMimicError(f"--landmarks {p} is a still picture (1 frame): the landmarks of a driving video move the face, "
                             f"one picture would hold it still. Give {LANDMARK_SOURCES}; the picture to animate is "
                             "--reference.")
