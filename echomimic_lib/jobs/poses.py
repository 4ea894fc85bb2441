"""V2 hand-pose sequences made once and kept: ``echomimic poses`` and ``echomimic animate --pose VIDEO``.

- :func:`video_poses`: DWPose hand poses of every frame of a driving video (the Hand-Pose Sequence Loader node's
  extraction: :func:`echomimic_lib.pose.dwpose.extract_pose_sequence`, half-body crop, a missing-frame policy),
  the video decoded one frame at a time.
- :func:`speech_gestures`: gestures from the speech (``animate --pose auto`` and the Gestures from Audio node).
- :func:`run_poses`: the command's job: every input, number and output checked (:func:`check`) before any
  model is found or loaded, then the sequence written whole or not at all, as a released pose folder
  (``0.npy, 1.npy, ...``) or our ``.npz``, with an optional ``--preview`` mp4 of the hands as animate draws them
  (with the speech for ``--audio``, with ``--preview-audio``'s sound for ``--video``), committed after the sequence.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import EchoMimicError
from ..io.os_errors import missing_text, writing
from ..io.file_safety import (
    ExistingFileError,
    publish,
    refuse_appeared,
    refuse_existing,
    refuse_input_as_output,
    regular_target,
    temp_beside,
    temp_folder_beside,
    temp_prefix,
)
from .animate_checks import (
    _number as parse_number,
    check_side,
    check_expressiveness,
    check_fps,
)
from .models_folder import dwpose_roots
from .output_file import OUTPUT_SUFFIXES, check_destination
from .speech_input import frame_count, probe_speech, read_speech, read_speech_summary
from ..pose.stabilize import stabilize_poses
from ..temporal import check_level as check_stabilize_level
from .pose_sources import (MISSING_DEFAULT, check_dwpose_models, check_pose_video, dwpose_detector, speech_gestures,
                           video_poses)

log = logging.getLogger(__name__)

NOT_A_FOLDER = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".npy", ".json", ".pkl", ".wav", ".mp3")
V2_SIZE, V2_SEED, DEFAULT_FPS = 768, 3407, 24.0  # animate --version v2's defaults (echomimic_lib.modes)
_FRAME = re.compile(r"^\d+\.npy$")


# ------------------------------------------------------------------------------------------------ the command
@dataclass
class PosesRequest:
    output: str
    video: str | None = None  # a driving video: DWPose poses of every frame
    audio: str | None = None  # or speech: gestures from it
    models: str | None = None
    download: bool = True
    on_missing: str | None = None  # video: interpolate (default), hold or fail
    gesture_library: str | None = None  # audio: pose folders to take gestures from (default <models>/poses/)
    expressiveness: float | None = None  # audio: 0..2 (default 1)
    seed: int | None = None  # audio: default 3407, as animate --version v2
    fps: float | None = None  # audio: default 24; video: the video's own rate
    length: int = 0  # frames: 0 = all (video) / follow the audio
    preview: str | None = None  # an mp4 of the hands as animate draws them
    preview_audio: str | None = None  # video: the preview's sound track (any file with sound; the poses stay the video's)
    width: int | None = None  # preview canvas (default 768, as V2)
    height: int | None = None
    force: bool = False  # replace an existing output (a folder only when it is a pose folder)
    stabilize: str = "off"  # steadier hands: off, light, medium, strong (echomimic_lib.pose.stabilize)


@dataclass
class PosesPlan:
    request: PosesRequest
    output: Path
    folder: bool  # a released pose folder (else .npz)
    preview: Path | None
    size: tuple[int, int]
    fps: float | None
    num_frames: int | None = None  # audio: the frame count animate would use
    wav: object = None
    sample_rate: int | None = None
    library: list | None = None
    speech: object = None  # audio: the gesture analysis, measured in the checks' decode pass (a SpeechStream)


def _number(value, flag: str, kind, lo, hi, hint: str):
    v = parse_number(value, flag, kind)
    if not (lo <= v <= hi):
        raise EchoMimicError(f"{flag} {value}: {hint}")
    return v


def _check_size(req) -> tuple[int, int]:
    w = V2_SIZE if req.width is None else req.width
    h = w if req.height is None else req.height
    w, h = check_side(w, "--width"), check_side(h, "--height")
    return w, h


def _refuse_mixed(req) -> None:
    if req.video and req.audio:
        raise EchoMimicError("give one source, --video or --audio, not both: the poses come from the video's frames or "
                             "from the speech. For a preview of the video's poses with sound, use --video V --preview "
                             "HANDS.mp4 --preview-audio A.")
    if not (req.video or req.audio):
        raise EchoMimicError("give one source: --video DRIVING.mp4 (DWPose poses of its frames) or --audio SPEECH.wav "
                             "(gestures from the speech).")
    if req.preview_audio and req.audio:
        raise EchoMimicError("--preview-audio is for --video: with --audio the preview already has that speech as its "
                             "sound; drop --preview-audio.")
    if req.preview_audio and not req.preview:
        raise EchoMimicError("--preview-audio is only the sound of the --preview video (the poses come from --video); add "
                             "--preview HANDS.mp4 or drop --preview-audio.")
    wrong = ([("--on-missing", req.on_missing)] if req.audio else
             [("--gesture-library", req.gesture_library), ("--expressiveness", req.expressiveness), ("--seed", req.seed)])
    for flag, value in wrong:
        if value is not None:
            raise EchoMimicError(f"{flag} is for {'--video' if req.audio else '--audio'}, not {'--audio' if req.audio else '--video'}; drop it.")


def is_replaceable_pose_folder(path: Path) -> bool:
    """A folder --force may replace: nothing in it but ``<N>.npy`` frame files (or nothing at all)."""
    return all(_FRAME.match(e.name) and (e.is_file() or e.is_symlink()) for e in path.iterdir())


def check_pose_output(output, force: bool) -> tuple[Path, bool]:
    """(path, is a folder): ``-o`` a .npz file or a released pose folder; an existing one only with ``force``."""
    from ..io.video_writer import check_output_path

    if not output or not str(output).strip():
        raise EchoMimicError("-o is empty; give a folder (released pose format) or a file name ending in .npz.")
    if str(output).strip() == "-":  # the Unix "to stdout" habit, not a folder named "-"
        raise EchoMimicError("-o -: writing to stdout is not supported (the poses are written under a temporary name and "
                             "renamed when complete); give a folder (released pose format) or a file name ending in .npz, "
                             "e.g. -o poses.npz.")
    out = Path(output).expanduser()
    suffix = out.suffix.lower()
    if suffix == ".npz":
        check_output_path(out, "-o")  # a folder, a device, an unwritable place: never replaced
        if os.path.lexists(out) and not force:
            refuse_existing([out], "--force", "pose file")
        return out, False
    if suffix in NOT_A_FOLDER:
        raise EchoMimicError(f"-o {output}: the poses are written as a folder (0.npy, 1.npy, ...) or a .npz file; "
                             + ("for a video of the hands use --preview FILE.mp4." if suffix in OUTPUT_SUFFIXES
                                else f"use -o {out.with_suffix('')} or -o {out.with_suffix('.npz')}."))
    if os.path.islink(out) and not out.exists():  # a link loop, or a link to nothing: no folder is there
        try:
            os.stat(out)
            loop = False
        except OSError as exc:
            loop = exc.errno == errno.ELOOP
        raise ExistingFileError(f"-o {out}: " + ("a symbolic link loop (a link that leads back to itself)" if loop else
                                                 f"a link to {os.readlink(out)}, which is not there")
                                + "; remove the link or choose a new folder name (or end -o in .npz for one file).")
    if os.path.lexists(out) and not out.is_dir():
        raise ExistingFileError(f"-o {out} is a file, not a folder, and is never replaced by a pose folder; choose a new "
                                "folder name, or end -o in .npz for one file.")
    check_output_path(out / "0.npy", "-o")  # the place is writable
    if out.is_dir():
        if not is_replaceable_pose_folder(out):
            shown = ", ".join(sorted(e.name for e in out.iterdir() if not _FRAME.match(e.name))[:5])
            raise ExistingFileError(f"-o {out} is a folder that holds other files than pose frames ({shown}); it is never "
                                    "replaced, not even with --force. Choose a new folder name.")
        if not force:
            refuse_existing([out], "--force", "pose folder")
    return out, True


def _check_preview(req, inputs: dict, output: Path) -> Path | None:
    if req.preview is None:  # `--preview ""` (a script's unset variable): refused as empty, not silently no preview
        return None
    return check_destination(req.preview, "--preview", OUTPUT_SUFFIXES, ".mp4", inputs, req.force, what="video",
                             needs="the preview is an H.264 mp4 video; end it in .mp4", others={"-o": output})


def _read_preview_audio(path, seconds: float | None = None) -> tuple:
    """``--preview-audio``: (samples (C, T), sample rate) of any file with a sound track (the driving video's own, too);
    its first ``seconds`` only when given (the rest is not decoded)."""
    from ..io.audio_file import read_audio

    p = Path(path).expanduser()
    if not p.is_file():
        raise EchoMimicError(f"--preview-audio {path}: {'is a folder' if p.is_dir() else missing_text(p)}; give the sound "
                             "for the preview (wav, mp3, flac, m4a, or a video with sound such as the driving video).")
    try:
        return read_audio(p, duration=seconds)
    except EchoMimicError as exc:
        raise EchoMimicError(f"--preview-audio {exc}") from None


def _preview_seconds(video, fps: float | None, length: int) -> float | None:
    """The most seconds of ``--preview-audio`` a preview of ``--length`` frames keeps (its writer trims the sound to
    the video), with a second to spare; None (all of it) without ``--length``."""
    if not length:
        return None
    from ..io.video_io import VideoFrames

    return length / min(VideoFrames(video).fps, fps or float("inf")) + 1.0  # --length counts the video's frames


def check(req: PosesRequest) -> PosesPlan:
    """Everything that can be checked without a model, in the order the user reads the command line."""
    _refuse_mixed(req)
    check_stabilize_level(req.stabilize, "--stabilize")
    fps = None if req.fps is None else check_fps(req.fps)
    length = _number(req.length or 0, "--length", int, 0, 10**6, "the number of frames must be 0 (all) or more.")
    size = _check_size(req)
    inputs: dict = {"--video": req.video, "--audio": req.audio, "--preview-audio": req.preview_audio}
    # the outputs before any input is decoded or a gesture library / model looked for: -o the input itself, a file
    # where a folder goes, an existing output without --force are said at once
    if req.output and str(req.output).strip():
        refuse_input_as_output(Path(req.output).expanduser(), inputs)
    output, folder = check_pose_output(req.output, req.force)
    refuse_input_as_output(output, inputs)
    preview = _check_preview(req, inputs, output)
    plan_extra: dict = {}
    if req.video:
        if not Path(req.video).is_file():
            raise EchoMimicError(f"--video {req.video}: {'is a folder' if Path(req.video).is_dir() else missing_text(req.video)}; "
                                 "give a driving video of a person (mp4, mov, webm, ...).")
        check_pose_video(req.video, "--video", "give a driving video of a person (mp4, mov, webm, ...).", "--audio")
        if (req.on_missing or MISSING_DEFAULT) not in ("interpolate", "hold", "fail"):
            raise EchoMimicError(f"--on-missing {req.on_missing}: choose interpolate, hold or fail.")
        if req.preview_audio:
            wav, sr = _read_preview_audio(req.preview_audio, _preview_seconds(req.video, fps, length))
            plan_extra = dict(wav=wav, sample_rate=sr)
    else:
        from .models_folder import gesture_library_dirs
        from ..audio.track import SpeechStart
        from ..pose.gestures import find_sources
        from ..pose.gestures.speech_stream import SpeechStream

        if req.seed is not None:
            _number(req.seed, "--seed", int, 0, 2**64 - 1, "use a whole number from 0 to 2^64-1.")
        check_expressiveness(1.0 if req.expressiveness is None else req.expressiveness)
        probe_speech(req.audio)
        dirs = gesture_library_dirs(req)
        sources = []
        for d in dirs:
            try:
                sources += find_sources(d)
            except EchoMimicError as exc:
                raise EchoMimicError(f"{exc} (gestures are taken from --gesture-library DIR, default the models folder's "
                                     "poses/.)") from None
        refuse_input_as_output(output, {f"--gesture-library ({s.name})": s for s in sources})  # -o a pose of it
        # with --length only the start those frames need is kept (the rest read a piece at a time for its checks,
        # in the same pass): the preview's sound is cut to the video anyway. Without it the video follows the audio
        # (at most a video's MAX_LENGTH frames, as animate's: a 1 Hz wav of a few KB is hours of speech, refused from
        # its header), so the preview's sound is the whole track: checked in one pass holding a piece, muxed from the
        # file again. Either pass hands its 16 kHz mono to the gesture analysis a piece at a time (no second decode,
        # only numbers per frame kept: the features are the whole track's, as they were)
        speech = SpeechStream(fps or DEFAULT_FPS)
        if length:
            wav, sr, raw = read_speech(req.audio, fps or DEFAULT_FPS, length, on_16k=speech.add)
            if not isinstance(raw, SpeechStart):  # the track ends within the start: all of it is in wav
                speech = SpeechStream(fps or DEFAULT_FPS)
                speech.add(raw.mono_16k())
        else:
            wav, raw = _whole_speech(req.audio, fps or DEFAULT_FPS, speech.add)
            sr = raw.sample_rate
        plan_extra = dict(num_frames=frame_count(raw, fps or DEFAULT_FPS, length or None), wav=wav, sample_rate=sr,
                          library=dirs, speech=speech)
    if req.video:
        check_dwpose_models(dwpose_roots(req), req.download)
    return PosesPlan(req, output, folder, preview, size, fps, **plan_extra)


def _whole_speech(path, fps: float, on_16k=None):
    """``read_speech(path)``'s checks in one decode pass that holds a piece of the track, never all of it: (the
    preview's sound, a :class:`~echomimic_lib.io.stereo.SoundFile` muxed from the file a piece at a time; the
    track's :class:`~echomimic_lib.audio.track.TrackSummary`). ``on_16k``: given the track's 16 kHz mono in the same
    pass, a piece at a time (the gesture analysis)."""
    from functools import partial

    from ..io.stereo import MixPeak, SoundFile
    from ..io.audio_file import audio_blocks

    mix = MixPeak()
    whole = read_speech_summary(path, mix.add, fps=fps, on_16k=on_16k)
    return SoundFile(partial(audio_blocks, Path(path)), whole.sample_rate, mix.channels, whole.samples, mix.value), whole


def _encode_preview(seq, path: Path, size, wav=None, sample_rate=None, chunk: int = 16, keep_appeared: str | None = None):
    """The hands as animate draws them, encoded into a hidden file beside ``path``: an uncommitted ``Mp4Writer``
    (the caller commits it once the sequence is in place, or aborts it; ``keep_appeared``: Mp4Writer's)."""
    from ..io.video_writer import Mp4Writer
    from ..pose import draw_hands_batch

    writer = Mp4Writer(path, seq.fps, wav, sample_rate, keep_appeared=keep_appeared)
    try:
        for a in range(0, len(seq), chunk):
            writer.write(draw_hands_batch(seq, range(a, min(a + chunk, len(seq))), size))
    except BaseException:
        writer.abort()
        raise
    return writer


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _swap_in(staged: Path, final: Path, folder: bool) -> tuple[Path, Path | None]:
    """``staged`` renamed to ``final`` (a file: through a symlink, as :func:`publish`); an existing output there is
    first renamed aside, hidden beside it. -> (where the new output now is, the old one's hidden name or None): the
    old one is removed once everything is written, or renamed back by :func:`_swap_back`."""
    target = final if folder else regular_target(final)
    aside = None
    if os.path.lexists(target):  # onto an empty placeholder of the same kind, which the rename replaces
        if folder and not target.is_symlink():
            aside = temp_folder_beside(target, ".replaced")
        else:  # a file, or -o a link to a pose folder: the link itself is put aside (a file placeholder)
            fd, name = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".replaced", dir=target.parent)
            os.close(fd)
            aside = Path(name)
        os.replace(target, aside)
    try:
        if folder:
            os.rename(staged, target)
        else:
            publish(staged, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    return target, aside


def _swap_back(target: Path, aside: Path | None) -> None:
    """Undo :func:`_swap_in`: the new output removed, the old one (if any) back under its name."""
    _remove(target)
    if aside is not None:
        try:
            os.replace(aside, target)
        except OSError:
            log.error("the earlier %s could not be put back; it is kept as %s", target, aside)


def write_poses(seq, plan: PosesPlan) -> None:
    """Written whole or not at all: the sequence staged beside ``plan.output`` and the preview encoded beside its
    own name, then the sequence moved into place and the preview after it; if any step fails, the earlier outputs
    (``--force``) are put back and nothing new is left, neither a sequence without its preview nor the reverse."""
    from ..pose import save_pose_npz, save_released_folder

    staged = temp_folder_beside(plan.output) if plan.folder else temp_beside(plan.output, ".partial.npz")
    writer = placed = None
    try:
        with writing(plan.output, staged=True):  # a full disk names the output asked for, not its staged copy
            if plan.folder:
                save_released_folder(seq, staged)
            else:
                save_pose_npz(seq, staged)
        if plan.preview is not None:
            writer = _encode_preview(seq, plan.preview, plan.size, plan.wav, plan.sample_rate,
                                     keep_appeared=None if plan.request.force else "--preview")
        force = plan.request.force
        if not force:  # another run (or anything) wrote -o or --preview while this one worked: kept, as at the start
            refuse_appeared(plan.output, "pose folder" if plan.folder else "pose file")
            if writer is not None:
                refuse_appeared(plan.preview, "video", "--preview")
        placed = _swap_in(staged, plan.output, plan.folder)
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        if placed is not None:
            _swap_back(*placed)
        raise
    finally:
        if os.path.lexists(staged):
            _remove(staged)
    if placed[1] is not None:
        _remove(placed[1])


def run_poses(req: PosesRequest, progress=None) -> dict:
    """Check, make the sequence (DWPose over the video's frames, or gestures from the speech), write it; a summary dict."""
    from .output_file import claim_results

    plan = check(req)
    # one run per output (a second is refused naming the first); a folder made for an output and left empty is removed
    with claim_results([(plan.output, "-o", plan.folder), (plan.preview, "--preview", False)]):
        return _make_poses(req, plan, progress)


def _make_poses(req: PosesRequest, plan: PosesPlan, progress) -> dict:
    if req.video:
        detector = dwpose_detector(dwpose_roots(req), req.download)
        seq = video_poses(req.video, detector, req.on_missing or MISSING_DEFAULT, plan.fps, req.length or None, progress)
        missing = list(seq.report.missing_frames)
    else:
        seq = speech_gestures(req.audio, plan.fps or DEFAULT_FPS, plan.num_frames, V2_SEED if req.seed is None else req.seed,
                              plan.library, 1.0 if req.expressiveness is None else req.expressiveness,
                              speech=plan.speech.features())
        missing = []
    seq = stabilize_poses(seq, req.stabilize)  # the saved sequence is the steadied one ("off": as made)
    write_poses(seq, plan)
    if plan.folder and abs(seq.fps - DEFAULT_FPS) > 1e-6:
        log.warning("a pose folder stores no frame rate: readers take it as %g fps, the poses are %g fps; write a .npz "
                    "(-o NAME.npz) to keep the rate.", DEFAULT_FPS, seq.fps)
    return {"output": str(plan.output), "format": "pose folder" if plan.folder else "npz", "frames": len(seq),
            "fps": seq.fps, "missing_frames": missing, "on_missing": req.on_missing or MISSING_DEFAULT,
            "preview": None if plan.preview is None else str(plan.preview), "sequence": seq}
