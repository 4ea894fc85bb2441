"""Training phases as data: which step belongs to which phase, what each phase trains and feeds.

V1 stage 1 / stage 2 are one phase each. V2's APDH (Audio-Pose Dynamic Harmonization) is a list of
phases (preset ``v2_apdh``):

====  =============================================  ================  ==========  =========
name  what                                           pose parts drawn  audio attn  data
====  =============================================  ================  ==========  =========
1     initial pose: complete keypoint maps           body head lips    muted       halfbody
                                                     hands                         + pose
2     iterative pose sampling, pose dropout 0->20%   (same)            muted       halfbody
                                                                                   + pose
3a    spatial pose sampling: keypoints without lips  body head hands   lips        halfbody
3b    without head, on padded headshots first        body hands        head        headshot
3c    the same on half-body data                     body hands        head        halfbody
3d    hands only, global audio attention             hands             global      halfbody
4     temporal: motion modules only, 24 frames       hands             global      halfbody
====  =============================================  ================  ==========  =========

Data kinds: ``halfbody`` (talking half-body clips), ``headshot`` (V1 talking heads, padded into the half-body
canvas), ``pose`` (fully pose-driven clips without usable speech, the paper's HumanVid: audio always dropped),
``all``; a phase may join several with "+".

Step numbers in logs, checkpoints and the progress bar count completed optimizer steps: step 1 is the first.

Keypoint removal order: lips, then head, then body; hands are always kept. "muted" = the audio
cross-attention output is multiplied by zero and its weights are frozen. Headshot samples always use the
head mask (Head Partial Attention) unless the audio is muted, and their padding is excluded from losses.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, PhaseConfig

POSE_PARTS = ("body", "head", "lips", "hands")
AUDIO_MODES = ("global", "muted", "lips", "head")
TRAINABLE = ("reference", "denoiser", "cond_encoder", "motion", "audio")
DATA_KINDS = ("all", "halfbody", "headshot", "pose")


def data_kinds(spec: str) -> list[str]:
    """``"halfbody+pose"`` -> ["halfbody", "pose"]."""
    return [k.strip() for k in spec.split("+") if k.strip()]


def validate_phases(phases: list[PhaseConfig], condition: str) -> None:
    if not phases:
        raise ConfigError("phases: at least one phase is needed")
    names = [p.name for p in phases]
    if len(set(names)) != len(names):
        raise ConfigError(f"phases: names must be unique, got {names}")
    for p in phases:
        where = f"phases.{p.name}"
        if p.steps < 0:
            raise ConfigError(f"{where}.steps must be >= 0")
    if not sum(p.steps for p in phases):  # would load every network and write a run that trained nothing
        raise ConfigError(f"phases: every phase has steps: 0 ({', '.join(names)}), so nothing would be trained; give a "
                          f"phase steps (e.g. --set phases.{names[0]}.steps=100)")
    for p in phases:
        where = f"phases.{p.name}"
        if p.kind not in ("spatial", "temporal"):
            raise ConfigError(f"{where}.kind must be spatial or temporal")
        if p.kind == "spatial" and p.frames != 1:
            raise ConfigError(f"{where}: spatial phases train single frames (frames: 1)")
        if p.kind == "temporal" and not 1 <= p.frames <= 32:
            raise ConfigError(f"{where}.frames must be 1..32 (the motion modules' position table)")
        bad = [t for t in p.train if t not in TRAINABLE]
        if bad or not p.train:
            raise ConfigError(f"{where}.train: choose from {', '.join(TRAINABLE)} (got {p.train})")
        if p.kind == "spatial" and "motion" in p.train:
            raise ConfigError(f"{where}: spatial phases have no motion modules to train")
        if p.audio not in AUDIO_MODES:
            raise ConfigError(f"{where}.audio must be one of {', '.join(AUDIO_MODES)}")
        kinds = data_kinds(p.data)
        if not kinds or any(k not in DATA_KINDS for k in kinds):
            raise ConfigError(f"{where}.data must be one of {', '.join(DATA_KINDS)} (or several joined by '+'), got '{p.data}'")
        bad = [x for x in p.pose_parts if x not in POSE_PARTS]
        if bad:
            raise ConfigError(f"{where}.pose_parts: unknown {bad}; choose from {', '.join(POSE_PARTS)}")
        if len(p.pose_dropout) != 2 or not all(0.0 <= x <= 1.0 for x in p.pose_dropout):
            raise ConfigError(f"{where}.pose_dropout must be [start, end] probabilities")
        if condition != "pose" and (p.audio in ("lips", "head") or p.data != "all"):
            raise ConfigError(f"{where}: lips/head audio masks and data kinds are V2 (data.condition: pose) features")


@dataclass(frozen=True)
class PhaseAt:
    index: int
    phase: PhaseConfig
    start: int  # first global step of the phase
    offset: int  # steps already done inside the phase

    @property
    def progress(self) -> float:
        return self.offset / max(1, self.phase.steps - 1) if self.phase.steps > 1 else 0.0


def phase_at(phases: list[PhaseConfig], step: int) -> PhaseAt:
    """The phase that global step ``step`` (0-based) belongs to; steps past the end stay in the last phase."""
    start = 0
    for i, p in enumerate(phases):
        if step < start + p.steps:
            return PhaseAt(i, p, start, step - start)
        start += p.steps
    last = len(phases) - 1
    return PhaseAt(last, phases[last], start - phases[last].steps, step - (start - phases[last].steps))


def pose_dropout_at(at: PhaseAt) -> float:
    """Linear ramp of the whole-pose dropout probability across the phase (start at its first step, end at its last)."""
    a, b = at.phase.pose_dropout
    return float(a + (b - a) * min(1.0, at.progress))


def needs_motion(phases: list[PhaseConfig]) -> bool:
    return any(p.kind == "temporal" for p in phases)


def describe(phases: list[PhaseConfig], condition: str = "pose") -> str:
    """The phase table logged at the start: 1-based step ranges; pose parts, pose dropout and data kinds only
    for V2 (``condition`` pose), the audio mask only when some phase does not use global attention."""
    v2 = condition == "pose"
    masks = any(p.audio != "global" for p in phases)
    rows, start = [], 0
    for p in phases:
        cols = [f"  {p.name:>6}", f"steps {start + 1:>7}-{start + p.steps:<7}", f"{p.kind:<8}", f"frames {p.frames:<2}",
                f"train {'+'.join(p.train):<30}"]
        if v2:
            cols += [f"pose {'+'.join(p.pose_parts):<22}", f"dropout {p.pose_dropout[0]:.2f}->{p.pose_dropout[1]:.2f}"]
        if masks:
            cols.append(f"audio {p.audio:<6}")
        if v2:
            cols.append(f"data {p.data}")
        rows.append(" ".join(cols).rstrip())
        start += p.steps
    return "\n".join(rows)
