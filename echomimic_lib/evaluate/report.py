"""The result of one evaluation: the numbers, a readable table (one column per clip, to compare settings side by
side), a JSON object, and the flat scalars the trainer logs."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .sync import SyncResult

# key, label, what is better (shown in the table)
ROWS = [
    ("av_offset_ms", "A/V offset (ms, + = audio late)", "near 0"),
    ("av_sync_corr", "sync strength (mouth vs energy)", "higher"),
    ("lse_c", "LSE-C (SyncNet confidence)", "higher"),
    ("lse_d", "LSE-D (SyncNet distance)", "lower"),
    ("jitter", "landmark jitter (% eye dist.)", "lower"),
    ("jitter_mouth", "  mouth jitter", "lower"),
    ("jitter_eyes", "  eye jitter", "lower"),
    ("flicker", "background flicker (0-255)", "lower"),
    ("face_rate", "face-detection rate", "higher"),
    ("shape_drift", "shape drift (Procrustes x1000)", "lower"),
    ("shape_drift_max", "  worst frame", "lower"),
    ("csim", "CSIM (ArcFace identity)", "higher"),
]
LEARNED = ("lse_c", "lse_d", "syncnet_av_offset", "csim")
# Below this share of frames with a face, the face metrics describe a handful of frames: every number of the
# report is marked unreliable (table: '?' after each value; JSON: "reliable": false).
MIN_FACE_RATE = 0.5


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


@dataclass
class EvalReport:
    source: str
    frames: int
    fps: float
    seconds: float
    av_offset_ms: float | None = None
    av_sync_corr: float | None = None
    jitter: dict = field(default_factory=dict)       # part -> value, "all" first
    flicker: float | None = None
    face_rate: float | None = None
    shape_drift: float | None = None                 # mean over frames
    shape_drift_max: float | None = None
    reference: str = "first frame"                   # what shape drift and CSIM compare against
    lse_c: float | None = None
    lse_d: float | None = None
    syncnet_av_offset: int | None = None             # SyncNet's own "AV offset" (frames at 25 fps)
    csim: float | None = None
    notes: list = field(default_factory=list)        # metrics left out and why
    sync: SyncResult | None = field(default=None, repr=False)  # curves for the plot

    @property
    def reliable(self) -> bool:
        return self.face_rate is None or self.face_rate >= MIN_FACE_RATE

    def value(self, key: str):
        if key == "jitter":
            return _num(self.jitter.get("all")) if self.jitter else None
        if key == "jitter_mouth":
            return _num(self.jitter.get("mouth")) if self.jitter else None
        if key == "jitter_eyes":
            if not self.jitter:
                return None
            return (self.jitter["left_eye"] + self.jitter["right_eye"]) / 2
        return _num(getattr(self, key))

    def to_dict(self) -> dict:
        """JSON-ready: the weight-free keys always (null when not computable), learned ones when computed."""
        out = {"source": self.source, "frames": self.frames, "fps": self.fps, "seconds": round(self.seconds, 3),
               "av_offset_ms": _num(self.av_offset_ms), "av_sync_corr": _num(self.av_sync_corr),
               "jitter": {k: _num(v) for k, v in self.jitter.items()} or None, "flicker": _num(self.flicker),
               "face_rate": _num(self.face_rate), "shape_drift": _num(self.shape_drift),
               "shape_drift_max": _num(self.shape_drift_max), "reference": self.reference, "reliable": self.reliable}
        for key in LEARNED:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["notes"] = list(self.notes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def scalars(self, prefix: str = "") -> dict[str, float]:
        """Flat numeric values (for TensorBoard / the training log); missing metrics are left out."""
        out = {}
        for key in ("av_offset_ms", "av_sync_corr", "flicker", "face_rate", "shape_drift", "shape_drift_max", *LEARNED):
            v = _num(getattr(self, key))
            if v is not None:
                out[prefix + key] = v
        for part, v in self.jitter.items():
            if _num(v) is not None:
                out[f"{prefix}jitter/{part}"] = float(v)
        return out

    def table(self) -> str:
        return table([self])


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "av_offset_ms":
        return f"{v:+.0f}"
    if key == "face_rate":
        return f"{v * 100:.1f} %"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def table(reports: list[EvalReport], names: list[str] | None = None) -> str:
    """A text table, one column per report (rows whose metric no report has are left out)."""
    names = names or [r.source for r in reports]
    rows = [(k, label, better) for k, label, better in ROWS if any(r.value(k) is not None for r in reports)]
    head = ["metric"] + [_short(n) for n in names] + ["better"]
    body = [[label] + [_fmt(k, r.value(k)) + ("" if r.reliable or r.value(k) is None else " ?") for r in reports] + [better]
            for k, label, better in rows]
    body.append(["frames / fps"] + [f"{r.frames} @ {r.fps:g}" for r in reports] + [""])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)).rstrip()
             for row in [head] + body]
    lines.insert(1, "-" * len(lines[0]))
    for r, n in zip(reports, names):
        lines += [f"note ({_short(n)}): {t}" if len(reports) > 1 else f"note: {t}" for t in r.notes]
    return "\n".join(lines)


def _short(name: str, limit: int = 28) -> str:
    name = str(name).replace("\\", "/").rsplit("/", 1)[-1] or str(name)
    return name if len(name) <= limit else "..." + name[-(limit - 3):]
