"""Gesture synthesis by motion matching: speech features + a gesture library -> a PoseSequence.

Which library frame each output frame shows is planned in :mod:`.planner`: units scored against the speech's stresses,
loudness and pauses, still holds, rests. Drawn from that plan, the motion follows the loudness within each unit too:
the elbows and wrists move 1 +- ``energy_gain`` times as far from their posture (their mean over a second, the hands
carried with the wrists; the gain follows the loudness smoothed over ``GAIN_SMOOTH_S``). Body, face and hands of a
frame always come from the same source frame, so the skeleton stays valid. Each switch is blended by inertialization:
the gap in position and velocity between where the previous motion was heading and the new unit decays to zero with a
quintic (continuous position, velocity and acceleration), over a time chosen so the blend's own acceleration stays
within half the library's 99th percentile; into a hold, the incoming motion decelerates to a stop instead. Hands move
with their wrists in the blends (the hand detector's finger jitter is not extrapolated).

With a reference pose the sources are moved onto its shoulders first (:func:`fit_sequence_to_reference`);
without one, every source is moved onto the first source's median shoulders.
"""
from __future__ import annotations

import numpy as np

from ...errors import EchoMimicError
from ..align import fit_sequence_to_reference
from ..sequence import PoseSequence
from .blend import clamp_box, render
from .library import GestureLibrary, joint_acceleration
from .planner import GestureOptions, Planner
from .speech import SpeechFeatures

GAIN_SMOOTH_S = 0.8  # the arm-amplitude gain follows the loudness this slowly (not syllable by syllable)


def _median_reference(seq: PoseSequence) -> PoseSequence:
    ref = seq.take([0])
    ref.body = np.median(seq.body, axis=0, keepdims=True)
    ref.body_score[:] = 1.0
    ref.draw_pose_params = seq.draw_pose_params[:1].copy()
    return ref


def aligned_sources(lib: GestureLibrary, reference: PoseSequence | None) -> list[PoseSequence]:
    """The library's sources moved onto the reference's shoulders (or onto the first source's)."""
    target = reference if reference is not None else _median_reference(lib.sources[0])
    out = []
    for i, s in enumerate(lib.sources):
        if reference is None and i == 0:
            out.append(s)
            continue
        try:
            out.append(fit_sequence_to_reference(s, target)[0])
        except EchoMimicError as exc:
            raise EchoMimicError(f"gesture library: {lib.names[i] if i < len(lib.names) else i}: {exc}") from exc
    if len({s.canvas_size for s in out}) > 1:
        raise EchoMimicError("gesture library: the pose sequences use different canvas sizes; re-extract them at one size.")
    return out


def synthesize(lib: GestureLibrary, speech: SpeechFeatures, num_frames: int | None = None, seed: int = 0,
               reference: PoseSequence | None = None, options: GestureOptions | None = None, prefix=None,
               **kw) -> PoseSequence:
    """A pose sequence of ``num_frames`` frames (default: the speech's) at the speech's fps, gesturing to it.

    ``reference``: the reference picture's pose (e.g. from ``detect_image_pose``) to align the shoulders to.
    ``prefix``: frame indices of the library's first source to play first, exactly as they are (the ``continue``
    retiming: see :mod:`.continuation`); the gestures carry on from there.
    ``options`` / keyword arguments: see :class:`GestureOptions` (``expressiveness``, ``variety_s``, ...).
    The same inputs and seed give the same sequence."""
    opts = options or GestureOptions(**kw)
    if options is not None and kw:
        opts = GestureOptions(**{**opts.__dict__, **kw})
    opts.check()
    n = speech.num_frames if num_frames is None else int(num_frames)
    if n <= 0:
        raise EchoMimicError(f"gesture synthesis: ask for at least one frame (got {n}).")
    if n != speech.num_frames:
        speech = _fit_length(speech, n)
    rng = np.random.default_rng(int(seed) % 2**63)
    plan = Planner(lib, speech, n, opts, rng, None if prefix is None else np.asarray(prefix, np.int64)).run()
    sources = aligned_sources(lib, reference)
    acc = _acc_limit(sources)
    keep = 0 if prefix is None or reference is not None else min(len(prefix), n)
    depth = 0.0 if opts.random_units else opts.energy_gain
    gain = 1.0 + depth * (2.0 * _smooth(plan.energy, GAIN_SMOOTH_S * speech.fps) - 1.0)
    return render(sources, plan, speech.fps, acc, clamp_box(lib.sources, sources), opts.min_blend_s, opts.max_blend_s, keep,
                  gain if depth > 0 else None)


def _smooth(x: np.ndarray, width: float) -> np.ndarray:
    w = max(1, int(round(width)))
    k = np.hanning(w + 2)[1:-1]
    return np.convolve(np.pad(x, (w // 2, w - 1 - w // 2), mode="edge"), k / k.sum(), mode="valid")


def _acc_limit(sources) -> float:
    """The blends' acceleration budget: half the library's 99th percentile of joint acceleration per frame (aligned sources)."""
    a = np.concatenate([joint_acceleration(s).reshape(-1) for s in sources])
    a = a[np.isfinite(a)]
    return 0.5 * float(np.percentile(a, 99)) if a.size else 1e-3


def _fit_length(speech: SpeechFeatures, n: int) -> SpeechFeatures:
    """Crop, or extend with silence (a pause: rest), to ``n`` frames."""
    if n <= speech.num_frames:
        return speech.crop(n)
    extra = n - speech.num_frames
    pad = lambda a, v: np.concatenate([a, np.full(extra, v, dtype=a.dtype)])  # noqa: E731
    pauses = list(speech.pauses)
    if pauses and pauses[-1][1] == speech.num_frames:
        pauses[-1] = (pauses[-1][0], n)
    else:
        pauses.append((speech.num_frames, n))
    pause = pad(speech.pause, True)
    return SpeechFeatures(speech.fps, pad(speech.loudness, 0.0), pad(speech.active, False), pause, pauses,
                          pad(speech.onset_strength, 0.0), speech.onsets, speech.stresses, pad(speech.pitch, np.nan),
                          pad(speech.pitch_motion, 0.0))


def synthesize_for_audio(library, audio, fps: float = 24.0, sample_rate=None, num_frames: int | None = None, seed: int = 0,
                         reference: PoseSequence | None = None, cache_dir=None, min_pause: float = 0.5, **kw) -> PoseSequence:
    """Load/index ``library`` (paths or a :class:`GestureLibrary`), analyse ``audio`` and synthesize."""
    from .library import load_library
    from .speech import analyze_speech

    lib = library if isinstance(library, GestureLibrary) else load_library(library, cache_dir=cache_dir)
    speech = analyze_speech(audio, fps, sample_rate=sample_rate, min_pause=min_pause)
    return synthesize(lib, speech, num_frames, seed, reference, **kw)


__all__ = ["aligned_sources", "synthesize", "synthesize_for_audio"]
