"""Gesture planning by motion matching: which library frame each output frame shows (a :class:`GesturePlan`), for
:func:`.synth.synthesize` to draw.

The output is planned unit by unit at the video frame rate. At each step the next stress (a strong onset, see
:mod:`.speech`) is the target: every unit is scored by

- *synchrony*: can its stroke (speed peak) land on the stress? The unit's preparation is entered part-way
  (frames skipped) or slowed down (down to 1 / ``max_stretch`` speed); the cost is the remaining miss;
- *energy*: its amplitude rank in the library against the loudness (and pitch movement) ahead, scaled by
  ``expressiveness``; loudness *for this clip* (:func:`~.speech.relative_loudness`: its percentile among the clip's
  speaking frames, mixed with the plain level), so a clip spoken at one loud level still has calmer stretches;
- *transition*: the distance of its start posture from the current posture;
- *variety*: a unit used within ``variety_s`` seconds is avoided while others remain; plus seeded noise
  (``temperature``) so seeds give different, reproducible results.

A stress too far ahead even for a slowed preparation is waited for with a still hold (the gesture's
post-stroke hold), and so are silent gaps of ``gap_s`` between phrases (until the next preparation).
Through pauses of ``min_pause`` seconds or more (see :func:`analyze_speech`) the gesture settles: the last unit ends at its slowest frame shortly before the pause and the pose holds there (pauses
shorter than ``hold_pause_s``), or moves to a calm library frame with the hands low (longer pauses). The motion then follows the loudness within each unit too: after its stroke a unit plays at a rate of
1 +- ``energy_rate`` (quietest .. loudest moment of the clip; forward only, resampled between source frames). Source
frames only ever move forward (never backwards).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...errors import EchoMimicError
from .library import GestureLibrary, posture
from .speech import SpeechFeatures, relative_loudness, true_runs

ENERGY_WEIGHT = 8.0  # an amplitude-rank miss of 0.125 costs as much as a stroke 0.1 s off its stress
GAP_LEAD_S = 0.3  # a hold in a gap between phrases starts this long before the gap
QUIET_TRANS = 4.0  # transition weight added at the calmest moments (0.5 at the loudest)
PEAK_WEIGHT = 2.0  # units with one clear stroke are preferred (a second peak would be a stroke off the stress)


@dataclass
class GestureOptions:
    expressiveness: float = 1.0  # 0: calmest units; 1: follow the speech; up to 2: the liveliest units
    variety_s: float = 4.0  # a unit is not reused within this many seconds while others remain
    temperature: float = 0.8  # weight of the seeded random part of the choice
    max_stretch: float = 1.6  # a preparation phase may be slowed down to 1 / max_stretch of its speed
    min_blend_s: float = 0.16
    max_blend_s: float = 0.8
    rest_lead_s: float = 0.3  # the move to the rest posture starts this long before a pause
    gap_s: float = 0.3  # silent gaps this long are held still too (shorter than a pause, not counted as one)
    hold_pause_s: float = 2.0  # through shorter pauses the hands hold where the last gesture settled
    hold_after_stroke: int = 3  # frames a unit plays after its stroke before the next may take over
    energy_rate: float = 0.4  # after its stroke a unit plays at 1 +- this (quietest .. loudest moment of the clip)
    energy_gain: float = 0.5  # arms move 1 +- this as far from their posture (quietest .. loudest moment)
    random_units: bool = False  # baseline for the benchmark: units at random, speech ignored, no rest

    def check(self) -> None:
        if not (0.0 <= self.expressiveness <= 2.0):
            raise EchoMimicError(f"expressiveness must be between 0 and 2, got {self.expressiveness}.")
        if self.variety_s < 0 or self.temperature < 0 or self.max_stretch < 1.0:
            raise EchoMimicError("gesture options: variety_s and temperature must be >= 0 and max_stretch >= 1.")
        if not (0.0 <= self.energy_rate < 1.0 and 0.0 <= self.energy_gain < 1.0):
            raise EchoMimicError(f"gesture options: energy_rate and energy_gain must be in [0, 1), got {self.energy_rate} "
                                 f"and {self.energy_gain}.")


@dataclass
class GesturePlan:
    """How the output was put together (``seq.report`` of a synthesized sequence)."""

    source: np.ndarray  # (N,) source index per output frame
    position: np.ndarray  # (N,) fractional source frame per output frame
    seams: list = field(default_factory=list)  # output frames where a new segment starts
    segments: list = field(default_factory=list)  # (start, end, kind 'unit'|'rest'|'hold'|'given', unit or -1)
    strokes: list = field(default_factory=list)  # planned stroke frames
    energy: np.ndarray | None = None  # (N,) the speech's loudness for this clip, 0..1 (relative_loudness)

    def summary(self) -> str:
        count = {k: sum(1 for s in self.segments if s[2] == k) for k in ("unit", "rest", "hold")}
        return f"{len(self.source)} frames, {count['unit']} gesture units, {count['rest']} rests, {count['hold']} holds"

def rest_candidates(lib: GestureLibrary) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source, frame, posture) of the library's calm frames: the slowest quarter of each source."""
    rows = []
    for i, m in enumerate(lib.motions):
        v = np.flatnonzero(m.valid)
        if v.size:
            rows += [(i, int(f)) for f in v[m.speed[v] <= np.percentile(m.speed[v], 25)]]
    src = np.array([r[0] for r in rows], np.int64)
    frm = np.array([r[1] for r in rows], np.int64)
    pos = np.stack([posture(lib.sources[s], lib.motions[s], f) for s, f in rows])
    return src, frm, pos


def rest_frame(lib: GestureLibrary, current: np.ndarray | None = None, low: float = 1.0) -> tuple[int, int]:
    """(source, frame) of a rest posture: a calm frame near ``current`` (a posture), preferring low hands by ``low``
    (0: the nearest calm frame; larger: lower hands, farther away)."""
    src, frm, pos = lib.__dict__.get("_rest") or lib.__dict__.setdefault("_rest", rest_candidates(lib))
    height = pos[:, [5, 11]].mean(axis=1)  # wrists below the neck, shoulder widths
    cost = -low * height if current is None else np.linalg.norm(pos - current, axis=1) - low * height
    j = int(np.argmin(cost))
    return int(src[j]), int(frm[j])


def _merge(spans: list) -> list:
    out: list = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _secondary_peak(speed: np.ndarray, stroke: int) -> float:
    """How strong a unit's second speed peak is against its stroke (0: one clear stroke; 1: two equal ones)."""
    if len(speed) < 3 or speed[stroke] <= 0:
        return 0.0
    inner = np.flatnonzero((speed[1:-1] >= speed[:-2]) & (speed[1:-1] >= speed[2:])) + 1
    other = [speed[i] - min(speed[min(i, stroke) : max(i, stroke) + 1]) for i in inner if abs(i - stroke) > 1]
    return float(max(other, default=0.0) / speed[stroke])


class Planner:
    """One clip's plan (see the module's words): ``Planner(...).run()`` -> :class:`GesturePlan`."""

    def __init__(self, lib: GestureLibrary, speech: SpeechFeatures, n: int, opts: GestureOptions, rng, prefix=None):
        self.lib, self.sp, self.n, self.o, self.rng, self.prefix = lib, speech, n, opts, rng, prefix
        self.fps = speech.fps
        u = lib.units
        self.q = np.array([lib.sources[s].fps for s in u["source"]]) / self.fps  # source frames per output frame
        self.stroke_out = u["stroke"] / self.q
        self.len_out = (u["end"] - u["start"]) / self.q
        moving = ~u["rest"]
        self.usable = moving if moving.any() else np.ones(len(lib), bool)
        amp = u["amplitude"]
        rank = np.zeros(len(lib))
        idx = np.flatnonzero(self.usable)
        rank[idx] = np.argsort(np.argsort(amp[idx])) / max(len(idx) - 1, 1)
        self.rank = rank
        self.last_used = np.full(len(lib), -np.inf)
        self.secondary = np.array([_secondary_peak(lib.motions[s].speed[a:b], st) for s, a, b, st in
                                   zip(u["source"], u["start"], u["end"], u["stroke"])])
        self.src = np.zeros(n, np.int64)
        self.pos = np.zeros(n)
        self.energy = relative_loudness(speech)  # 0..1 against the clip's own loudness
        depth = 0.0 if opts.random_units else opts.energy_rate  # the baseline ignores the speech
        self.rate = 1.0 + depth * (2.0 * self.energy - 1.0)  # playback rate after a stroke
        self.plan = GesturePlan(self.src, self.pos, energy=self.energy)

    def _fill(self, t0, t1, source, positions, kind, unit):
        self.src[t0:t1] = source
        self.pos[t0:t1] = positions
        if t0 > 0:
            self.plan.seams.append(t0)
        self.plan.segments.append((t0, t1, kind, unit))

    def _rest(self, t0, t1, length_s: float = 0.0):
        segs = self.plan.segments
        if segs and segs[-1][2] == "rest" and segs[-1][1] == t0:  # a rest goes on: same frame, no new seam
            a, _, _, _ = segs.pop()
            self.src[t0:t1], self.pos[t0:t1] = self.src[a], self.pos[a]
            segs.append((a, t1, "rest", -1))
            return
        if t0 > 0 and length_s < self.o.hold_pause_s:  # a short pause: the gesture settles where it ended
            s, f = int(self.src[t0 - 1]), float(self.pos[t0 - 1])
        else:  # a long one (or the start): a calm frame with the hands low, near the current posture
            s, f = rest_frame(self.lib, self._posture_at(t0), low=min(1.0, length_s / 3.0))
        self._fill(t0, t1, s, np.full(t1 - t0, float(f)), "rest", -1)

    def _posture_at(self, t):
        if t <= 0:
            return None
        s, p = int(self.src[t - 1]), int(round(self.pos[t - 1]))
        return posture(self.lib.sources[s], self.lib.motions[s], p)

    def _target_energy(self, t, span):
        sp = self.sp
        end = min(self.n, t + max(int(span), 1))
        if self.o.random_units:
            return 0.5
        loud = float(self.energy[t:end].mean()) if end > t else 0.0
        pm = float(np.clip(sp.pitch_motion[t:end].mean() / 4.0, 0, 1)) if end > t else 0.0
        return float(np.clip(self.o.expressiveness * (0.85 * loud + 0.15 * pm), 0, 1))

    def _choose(self, t, lead, cur_posture):
        """(unit, entry frames skipped (output frames), prep rate) for a stroke ``lead`` frames ahead (None: no target)."""
        u, o = self.lib.units, self.o
        cand = np.flatnonzero(self.usable)
        fresh = cand[t - self.last_used[cand] > o.variety_s * self.fps]
        if fresh.size:
            cand = fresh
        s_out = self.stroke_out[cand]
        if lead is None:
            miss = np.zeros(len(cand))
        else:
            reach = s_out * o.max_stretch
            miss = np.where(lead <= reach, 0.0, lead - reach)
            miss = np.where(s_out < 1, np.abs(lead - s_out), miss)
        target = self._target_energy(t, np.median(self.len_out))
        energy = np.abs(self.rank[cand] - target)
        trans = 0.0 if cur_posture is None else np.linalg.norm(u["start_posture"][cand] - cur_posture, axis=1)
        # the blend into a unit far away is motion too: the calmer the moment, the more it costs
        w_trans = 0.5 + QUIET_TRANS * (1.0 - target)
        cost = (miss / (0.1 * self.fps) + ENERGY_WEIGHT * energy + PEAK_WEIGHT * self.secondary[cand] + w_trans * trans
                + o.temperature * self.rng.random(len(cand)))
        k = int(cand[np.argmin(cost)])
        return k

    def _play(self, k, t, lead, limit, settle: int = 0):
        """Place unit k from output frame t; returns the frame after it. ``settle``: when the unit runs into
        ``limit`` (a rest follows), end it instead at its slowest frame within the last ``settle`` frames."""
        u = self.lib.units
        q, s_out = self.q[k], self.stroke_out[k]
        start, end, stroke = int(u["start"][k]), int(u["end"][k]), int(u["stroke"][k])
        if lead is None or lead <= 0:
            entry, rate_prep, land = 0.0, 1.0, s_out
        elif lead <= s_out:
            entry, rate_prep, land = s_out - lead, 1.0, lead
        else:
            rate_prep = max(s_out / lead, 1.0 / self.o.max_stretch)
            entry, land = 0.0, s_out / rate_prep
        # positions: preparation (entry..stroke) at rate_prep, then the rest of the unit at rate 1
        n_prep = int(np.ceil(land - 1e-9))
        prep = start + (entry + np.arange(n_prep) * rate_prep) * q
        # after the stroke the unit plays faster when the speech is loud, slower when quiet (forward only)
        span = (end - 1 - start - stroke) / q
        r = self.rate[t + n_prep : t + n_prep + int(np.ceil(span / (1 - self.o.energy_rate))) + 2]
        off = np.r_[0.0, np.cumsum(np.r_[r, np.ones(int(np.ceil(span)) + 2)])]
        after = start + stroke + off[off <= span + 1e-9] * q
        positions = np.concatenate([np.minimum(prep, start + stroke), after])
        t1 = min(t + len(positions), limit)
        if t1 <= t:
            return t
        if settle and t1 == limit:
            lo = min(max(n_prep + self.o.hold_after_stroke, t1 - t - settle), t1 - t - 1)
            sp = self.lib.motions[int(u["source"][k])].speed[np.round(positions[lo : t1 - t]).astype(np.int64)]
            t1 = t + lo + int(np.argmin(sp)) + 1
        self._fill(t, t1, int(u["source"][k]), positions[: t1 - t], "unit", k)
        if t + n_prep < t1:
            self.plan.strokes.append(t + n_prep)
        self.last_used[k] = t
        return t1

    def run(self) -> GesturePlan:
        sp, o, n = self.sp, self.o, self.n
        if o.random_units:
            t = 0
            while t < n:
                k = int(self.rng.choice(np.flatnonzero(self.usable)))
                t = max(self._play(k, t, None, n), t + 1)
            return self.plan
        lead_rest = int(round(o.rest_lead_s * self.fps))
        stresses = np.asarray(sp.stresses, dtype=np.int64)
        # pauses (rest), and silent gaps between phrases held still until the next gesture's preparation
        prep = int(np.ceil(o.min_blend_s * self.fps)) + 1
        lead_gap = int(round(GAP_LEAD_S * self.fps))
        gaps = []
        for a, b in true_runs(~sp.active):
            if b - a >= o.gap_s * self.fps and b - prep - a >= 2:
                before = stresses[stresses < a]  # the hold starts early, but after the last stroke has landed
                start = max(a - lead_gap, int(before[-1]) + o.hold_after_stroke if before.size else 0, 0)
                gaps.append((min(start, a), b - prep))
        pauses = _merge([(max(0, a - lead_rest) if a > 0 else 0, b) for a, b in sp.pauses] + gaps)
        t = 0
        if self.prefix is not None and len(self.prefix):  # frames given as they are (source 0), then carry on
            t = min(len(self.prefix), n)
            self._fill(0, t, 0, self.prefix[:t].astype(np.float64), "given", -1)
        while t < n:
            pause = next(((a, b) for a, b in pauses if a <= t < b), None)
            if pause is not None:
                self._rest(t, min(pause[1], n), (pause[1] - pause[0]) / self.fps)
                t = min(pause[1], n)
                continue
            limit = min([a for a, _ in pauses if a > t] + [n])
            if limit - t < 3:  # too short for a gesture: rest (and the pause follows)
                self._rest(t, limit)
                t = limit
                continue
            min_lead = int(np.ceil(o.min_blend_s * self.fps))  # a stroke lands after the seam's blend
            ahead = stresses[(stresses >= t + min_lead) & (stresses < limit)]
            lead = int(ahead[0] - t) if ahead.size else None
            k = self._choose(t, lead, self._posture_at(t))
            reach = int(np.floor(self.stroke_out[k] * o.max_stretch))
            if lead is not None and t > 0 and lead > reach + 1:  # too early even for a slow preparation: hold still
                wait = lead - max(reach, min_lead)
                self._fill(t, t + wait, int(self.src[t - 1]), np.full(wait, self.pos[t - 1]), "hold", -1)
                t, lead = t + wait, lead - wait
            stop = limit
            if ahead.size > 1:  # leave room for the next unit to prepare the following stroke
                land = t + (lead if lead is not None else 0)
                prep = max(int(np.median(self.stroke_out)), min_lead + 1)
                stop = min(limit, max(land + o.hold_after_stroke, int(ahead[1]) - prep))
            if limit - stop < 6:  # too little left for another gesture before the pause: this one settles into it
                stop = limit
            to_rest = stop == limit and limit < n
            t_end = self._play(k, t, lead, stop, settle=int(round(0.4 * self.fps)) if to_rest else 0)
            if to_rest and t_end < limit:  # settled early: the rest starts now
                self._rest(t_end, limit)
                t_end = limit
            t = max(t_end, t + 1)
        return self.plan


__all__ = ["GestureOptions", "GesturePlan", "Planner", "rest_frame"]
