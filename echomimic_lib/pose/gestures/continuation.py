"""The ``continue`` retiming of a V2 pose sequence: when the speech outlasts the sequence, the sequence plays once
(exactly as the other policies play it while it lasts) and gestures matched to the speech carry on from where it
ends -- from the sequence's own gesture units and those of any library folders -- instead of playing it backwards
(ping-pong) or from the start again (loop). It is the default policy for V2 hand poses
(:func:`retime_pose_sequence`); a sequence with no gesture to carry on with (too short, nobody moving) and no
gesture library beside it, or no speech to match, falls back to ping-pong, saying so in the log."""
from __future__ import annotations

import logging

import numpy as np

from ...errors import EchoMimicError
from ...retime import CONTINUE, default_policy, retime_indices
from ..sequence import PoseSequence
from .library import GestureLibrary, _concat_units, index_source
from .speech import SpeechFeatures

log = logging.getLogger(__name__)
FALLBACK = "ping-pong"


class NoGesturesError(EchoMimicError):
    """The pose sequence (and library) holds no gesture unit to carry on with."""


def library_from_sequences(seqs: list[PoseSequence], names: list[str] | None = None) -> GestureLibrary:
    """A gesture library of in-memory sequences (indexed now, not cached)."""
    tables = []
    for i, s in enumerate(seqs):
        t = index_source(s)
        tables.append(dict(t, source=np.full(len(t["start"]), i, dtype=np.int64)))
    lib = GestureLibrary(list(seqs), _concat_units(tables), list(names or [s.source or f"sequence {i}" for i, s in enumerate(seqs)]))
    if len(lib) == 0 or not (~lib.units["rest"]).any():
        raise NoGesturesError("retime 'continue': the pose sequence holds no gesture to carry on with (too short or nobody "
                             "moving); give a gesture library folder too, or choose another retiming (ping-pong, loop, ...).")
    return lib


def covered_frames(seq: PoseSequence, out_fps: float) -> int:
    """Output frames the sequence covers once at ``out_fps`` (as :func:`echomimic_lib.retime.retime_indices`)."""
    if abs(seq.fps - out_fps) > 1e-6:
        return max(1, int(np.floor(len(seq) * out_fps / seq.fps + 1e-9)))
    return len(seq)


def continue_sequence(seq: PoseSequence, n_out: int, out_fps: float, speech: SpeechFeatures, library=None, seed: int = 0,
                      **options) -> PoseSequence:
    """``n_out`` frames at ``out_fps``: ``seq`` once, then gestures to ``speech`` (features at ``out_fps``).

    ``library``: extra gesture sources (a :class:`GestureLibrary` or paths for :func:`load_library`), used beside
    ``seq``'s own units. ``options``: see :class:`~echomimic_lib.pose.gestures.planner.GestureOptions`."""
    from .library import load_library
    from .synth import synthesize

    n_out = int(n_out)
    if n_out <= 0:
        raise EchoMimicError(f"cannot retime a pose sequence to {n_out} frames; ask for at least one frame.")
    n_time = covered_frames(seq, out_fps)
    if n_out <= n_time:  # long enough: the same frames as every other policy
        return seq.retime(n_out, "fail", out_fps)
    if abs(speech.fps - out_fps) > 1e-6:
        raise EchoMimicError(f"retime 'continue': the speech features are at {speech.fps:g} fps, the video at {out_fps:g}; "
                             "analyse the speech at the video's frame rate.")
    extra = []
    if library is not None:
        lib = library if isinstance(library, GestureLibrary) else load_library(library)
        extra = [(s, n) for s, n in zip(lib.sources, lib.names)]
    lib = library_from_sequences([seq] + [s for s, _ in extra], ["pose sequence"] + [n for _, n in extra])
    prefix = retime_indices(len(seq), n_time, "fail", seq.fps, out_fps)
    out = synthesize(lib, speech, n_out, seed, prefix=prefix, **options)
    out.frame_ids[:n_time] = seq.frame_ids[prefix]  # the source's frame numbers while it plays
    out.source = f"{seq.source or 'pose sequence'}, continued with gestures from the speech"
    return out


def retime_pose_sequence(seq: PoseSequence, n_out: int, out_fps: float, policy: str | None = None, audio=None,
                         library=None, seed: int = 0, speech: SpeechFeatures | None = None, **options) -> PoseSequence:
    """``seq`` fitted to ``n_out`` frames at ``out_fps`` with ``policy`` (None: ``continue``, the V2 default).

    ``continue`` needs the speech: ``speech`` (features at ``out_fps``) or ``audio`` (anything
    :func:`~echomimic_lib.pose.gestures.analyze_speech` reads; analysed only when the sequence is too short). Without
    speech, or when neither ``seq`` nor ``library`` holds a gesture unit, it falls back to ping-pong with a warning
    in the log. Other policies: :meth:`PoseSequence.retime`."""
    from .speech import analyze_speech

    policy = default_policy(policy, hand_pose=True)
    if policy != CONTINUE:
        return seq.retime(n_out, policy, out_fps=out_fps)
    if 0 < int(n_out) <= covered_frames(seq, out_fps):  # long enough: the same frames as every other policy
        return seq.retime(n_out, "fail", out_fps=out_fps)
    name = seq.source or "the pose sequence"
    if speech is None and audio is None:
        log.warning("retime 'continue': no speech to match gestures to for %s; ping-pong instead.", name)
        return seq.retime(n_out, FALLBACK, out_fps=out_fps)
    if speech is None:
        speech = analyze_speech(audio, out_fps)
    try:
        return continue_sequence(seq, n_out, out_fps, speech, library=library, seed=seed, **options)
    except NoGesturesError:
        log.warning("retime 'continue': %s holds no gesture to carry on with (too short or nobody moving) and no "
                    "gesture library is given; ping-pong instead (give --gesture-library, or choose a policy).", name)
        return seq.retime(n_out, FALLBACK, out_fps=out_fps)
