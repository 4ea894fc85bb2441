"""Streaming H.264 mp4 writer (PyAV) that never leaves a partial file and never replaces a non-file.

- Frames are encoded as they arrive (:meth:`Mp4Writer.write`, or :meth:`Mp4Writer.sink` as the
  sampler's ``frame_sink``), so a long video never sits in memory as one array.
- The file is written under a unique temporary name in the destination's folder (two runs writing
  the same path never share one) and renamed into place by :meth:`Mp4Writer.commit`; any failure,
  including Ctrl-C, removes the temporary file (:meth:`Mp4Writer.abort`, also on leaving a ``with``
  block without a commit).
- :func:`check_output_path` refuses, before any work, a destination that is a directory, a device,
  pipe or socket, whose parent is a file, or whose folder is not writable (a real probe: it also
  catches read-only file systems, where permission bits say nothing).
- A full disk (``ENOSPC``/``EDQUOT``) or any other write error becomes an :class:`OutputError`
  in :mod:`.os_errors`' one form: ``cannot write <path>: <what the system said>; <fix>. Nothing partial was kept ...``
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import shutil
import stat
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import EchoMimicError
from .file_safety import publish, publish_absent, publish_new, temp_prefix, track_partial, untrack_partial
from .stereo import SoundFile, to_stereo
from .video_color import GENERATED, ColorDescription, tag_codec, to_yuv420p

log = logging.getLogger(__name__)
# the sample rates FFmpeg's AAC encoder takes; a track at another rate (a 192 kHz recording) is resampled to the
# nearest one above it (96 kHz at most) for the output, never refused after the render
MAX_SAMPLE_RATE = 768000  # past any recorder's (384 kHz DXD, twice over)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


def aac_rate(sample_rate: int) -> int:
    """The rate an output's sound track is encoded at: ``sample_rate`` where AAC takes it, else the next AAC rate."""
    return next((r for r in AAC_RATES if r >= sample_rate), AAC_RATES[-1])

ENCODER_THREADS = 4


class OutputError(EchoMimicError):
    """The output file cannot be written (bad destination, full disk, permissions)."""


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path) -> None:
    from .fetch_plan import is_planning

    if is_planning():  # a dry run (`echomimic batch --dry-run`) writes nothing: the system is asked instead
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write into {folder} (no permission, or a read-only file system); choose an "
                              "output in a writable folder.")
        return
    try:
        fd, name = tempfile.mkstemp(prefix=".echomimic-write-test.", dir=folder)
    except OSError as exc:
        from .os_errors import refused

        raise refused(exc, folder, "write into", OutputError) or OutputError(
            f"cannot write into {folder} ({exc.strerror or exc}); choose an output in a writable folder.") from exc
    os.close(fd)
    os.unlink(name)


def _link_loop(flag: str, path: Path) -> OutputError:
    return OutputError(f"{flag} {path}: a symbolic link loop (a link that leads back to itself); remove the link or "
                       "choose another file name.")


def check_output_path(path, flag: str = "the output path", example: str = "out.mp4") -> Path:
    """Validate a destination file before any work; returns it with symlinks resolved (nothing is created).

    ``flag`` names the setting in messages (e.g. ``-o/--output`` on the command line); ``example``: the file name
    suggested inside a folder given as the output."""
    if path is None or str(path).strip() == "":
        raise OutputError(f"{flag} is empty; give a file name such as {example}.")
    p = Path(path).expanduser()
    if p.is_symlink():
        try:
            p = p.resolve(strict=False)  # write through the link: the link itself is never replaced
        except (RuntimeError, OSError):  # a link that leads back to itself (RuntimeError up to Python 3.12)
            raise _link_loop(flag, p) from None
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):  # the parent check below says why
        st = None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # (Python 3.13 resolves a loop without raising; its stat says it)
            raise _link_loop(flag, p) from None
        raise OutputError(f"{flag} {p}: cannot be inspected ({exc.strerror or exc}); choose another file name.") from exc
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{flag} {p} is a directory; give a file name inside it, e.g. {p / example}.")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{flag} {p} is not a regular file (a device, pipe or socket) and is never replaced; "
                              f"give the name of a new or existing {Path(example).suffix} file.")
    parent = p.parent
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputError(f"{flag} {p}: {base} is a file, not a folder; choose an output inside an existing or new folder.")
    _probe_writable(base)
    return p


def _as_uint8(frames) -> np.ndarray:
    if hasattr(frames, "detach"):  # torch tensor
        frames = frames.detach().cpu().float().numpy() if frames.dtype.is_floating_point else frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise EchoMimicError(f"video frames must be (F, H, W, 3), got {frames.shape}.")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return frames


def _even(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even sizes: repeat the last row / column when odd."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


class Mp4Writer:
    """``with Mp4Writer(path, fps, audio, sr) as w: w.write(frames) ...; w.commit()``.

    ``audio`` (C, T) float in [-1, 1] is trimmed to the duration of the frames written; a
    :class:`~echomimic_lib.io.stereo.SoundFile` is muxed from its file a piece at a time (a long track never held). ``color``: the video's colour
    description (:mod:`echomimic_lib.io.video_color`); by default BT.709, limited range, tagged (sRGB frames).
    ``keep_appeared``: the flag of a destination that was free when the command started (no ``--force``): anything that
    appeared there since is kept by :meth:`commit`, and this file is not written (:func:`.file_safety.publish_absent`)."""

    def __init__(self, path, fps: float, audio: np.ndarray | None = None, sample_rate: int | None = None, crf: int = 18,
                 color: ColorDescription | None = None, next_name=None, keep_appeared: str | None = None):
        self.path = check_output_path(path)
        self.next_name = next_name  # numbered outputs: another name when this one was taken meanwhile (publish_new)
        self.keep_appeared = keep_appeared
        if audio is not None and not sample_rate:
            raise EchoMimicError("audio given without a sample rate.")
        if audio is not None and not 1 <= sample_rate <= MAX_SAMPLE_RATE:  # (found here, not at the first frame muxed;
            # under 1 Hz: int() made it 0 and the sound was left out without a word)
            raise EchoMimicError(f"the sound track's sample rate {sample_rate} Hz is no recording's (1 .. {MAX_SAMPLE_RATE} "
                                 "Hz); give the audio as a file or node that reads it (e.g. Load Audio) with its real rate.")
        self.fps = float(fps)
        if audio is None or isinstance(audio, SoundFile):
            self.audio = audio
        else:
            self.audio = to_stereo(np.atleast_2d(np.asarray(audio, dtype=np.float32)))
        self.sample_rate = int(sample_rate) if sample_rate else None
        self.crf = crf
        self.color = GENERATED if color is None else color
        self.frames_written = 0
        self.size: tuple[int, int] | None = None
        self._container = self._stream = self._audio_stream = self._tmp = None

    # ---------------------------------------------------------------- writing
    def _open(self, width: int, height: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(self.path.stem), suffix=".partial.mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(name)
        track_partial(self._tmp)  # removed by a Ctrl-C that cannot wait for the frame in flight (echomimic_lib.cli)
        self._container = av.open(name, mode="w", format="mp4")
        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if self.color.tagged:  # the H.264 VUI and the mp4 colr box; an untagged description writes none (as before)
            tag_codec(self._stream.codec_context, self.color)
        # a fixed thread count (not 'auto', which follows the machine's cores and changes x264's decisions). Even so,
        # the bytes are not always the same run to run: measured 2026-12-05 with PyAV 18.1's libx264, some content
        # (the tiny test model's noise-like frames, 64-256 px) gave up to 9 different files in 12 encodes of identical
        # frames, with 1 thread too, in one process or in several (x264's SIMD code: with asm=0 and 1 thread every
        # encode was the same, but that is several times slower). Compare or hash decoded frames (the batch records
        # frames_sha256 of the frames before encoding), not the file's bytes.
        self._stream.options = {"crf": str(self.crf), "threads": str(ENCODER_THREADS)}
        if self.audio is not None:  # every stream must exist before the first packet is muxed
            self._audio_stream = self._container.add_stream("aac", rate=aac_rate(self.sample_rate))
            self._audio_stream.layout = "stereo" if self.audio.shape[0] == 2 else "mono"

    def write(self, frames) -> None:
        """Encode (k, H, W, 3) frames (uint8, or float in [0, 1]; numpy or torch)."""
        import av

        frames = _as_uint8(frames)
        if self._container is None and (frames.shape[1] % 2 or frames.shape[2] % 2):
            h, w = frames.shape[1:3]
            log.info("the frames are %dx%d; H.264 (yuv420p) needs even sizes, so the video is padded to %dx%d by repeating "
                     "the last %s", w, h, w + w % 2, h + h % 2, " and ".join(n for n, odd in (("column", w % 2), ("row", h % 2)) if odd))
        frames = _even(frames)
        try:
            if self._container is None:
                self.size = (frames.shape[2], frames.shape[1])
                self._open(*self.size)
            elif (frames.shape[2], frames.shape[1]) != self.size:
                raise EchoMimicError(f"frame size changed from {self.size} to {(frames.shape[2], frames.shape[1])} mid-video.")
            for frame in frames:
                for packet in self._stream.encode(to_yuv420p(av.VideoFrame.from_ndarray(frame, format="rgb24"), self.color)):
                    self._container.mux(packet)
                self.frames_written += 1
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise self._explain(exc) from exc
            raise

    def sink(self, start: int, frames) -> None:
        """The sampler's ``frame_sink(start, frames)``: frames arrive in order."""
        if start != self.frames_written:
            self.abort()
            raise EchoMimicError(f"frames arrived out of order (frame {start} after {self.frames_written} written).")
        self.write(frames)

    def commit(self) -> Path:
        """Finish the file (audio trimmed to the video) and move it into place; returns the final path."""
        if self._container is None:
            raise EchoMimicError(f"no frames were written to {self.path}.")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            if self.audio is not None:
                self._mux_audio()
            self._container.close()
            self._container = None
            check_output_path(self.path)  # still a file (or nothing) at the very end: never replace anything else
            if self.keep_appeared is not None:
                publish_absent(self._tmp, self.path, "video", self.keep_appeared)
            elif self.next_name is None:
                publish(self._tmp, self.path)  # the umask's permissions, not mkstemp's 0600
            else:
                self.path = publish_new(self._tmp, self.path, self.next_name)
            untrack_partial(self._tmp)
            self._tmp = None
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError):
                raise self._explain(exc) from exc
            raise
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (idempotent)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # closing a half-written file may fail again (disk still full): the file goes anyway
                pass
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            untrack_partial(self._tmp)
            self._tmp = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # no-op after a commit

    # ---------------------------------------------------------------- helpers
    def _mux_audio(self) -> None:
        import av

        sr, stream = self.sample_rate, self._audio_stream
        n = int(round(self.frames_written / self.fps * sr))
        if isinstance(self.audio, SoundFile):
            blocks = self.audio.blocks(n, 1024)
        else:
            audio = self.audio[:, :n]
            blocks = (np.ascontiguousarray(audio[:, start : start + 1024]) for start in range(0, audio.shape[1], 1024))
        frames = _sound_frames(blocks, sr, stream.layout.name)
        if aac_rate(sr) != sr:  # a rate AAC has no table for: resampled to the stream's (an AAC rate as it is, as before)
            frames = _resampled(frames, av.AudioResampler(format="fltp", layout=stream.layout.name, rate=aac_rate(sr)))
        for frame in frames:
            for packet in stream.encode(frame):
                self._container.mux(packet)
        for packet in stream.encode():
            self._container.mux(packet)

    def _explain(self, exc: OSError) -> OutputError:
        """``cannot write <path>: <what the system said>; <fix>. Nothing was written ...`` (:mod:`.os_errors`' form)."""
        from .file_safety import disk_full
        from .os_errors import KEPT, write_refused

        folder, free = self.path.parent, ""
        if disk_full(exc):
            try:
                free = f" {shutil.disk_usage(_nearest_existing(folder)).free / 1024**2:.0f} MB free in {folder}."
            except OSError:
                pass
        refused = write_refused(exc, self.path, KEPT + free)
        if refused is not None:
            return OutputError(str(refused))
        return OutputError(f"cannot write {self.path}: {exc.strerror or exc}; nothing was written. Check the folder "
                           "(permissions, free space) or choose another output.")


def _sound_frames(blocks, sr: int, layout: str):
    """The AudioFrames of ``blocks`` ((C, k) float32, in order), each with its pts; one block held at a time."""
    import av

    pts = 0
    for block in blocks:
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = sr, pts
        pts += block.shape[1]
        yield frame


def _resampled(frames, resampler):
    """``frames`` through ``resampler`` (flushed at the end), numbered in the new rate's samples."""
    pts = 0
    for frame in itertools.chain(frames, [None]):
        for out in resampler.resample(frame):
            out.pts, pts = pts, pts + out.samples
            yield out
