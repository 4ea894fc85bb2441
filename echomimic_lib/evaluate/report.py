"""The result of one evaluation: the numbers, a readable table (one column per clip, to compare settings side by
side), a JSON object, and the flat scalars the trainer logs."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .sync import MIN_SYNC_SECONDS, SyncResult

# key, label, what is better (shown in the table)
ROWS = [
    ("av_offset_ms", "A/V offset (ms, + = audio late)", "near 0"),
    ("av_sync_corr", "sync strength (mouth vs energy)", "higher"),
    ("av_sync_p", "  p-value vs unrelated audio", "lower"),
    ("av_sync_z", "  z-score vs unrelated audio", "higher"),
    ("av_sync_null_p95", "  unrelated audio, 95th pct", "below"),
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
    ("fid", "FID (Inception, vs real frames)", "lower"),
    ("fvd", "FVD (I3D, vs real clips)", "lower"),
]
LEARNED = ("lse_c", "lse_d", "syncnet_av_offset", "csim", "fid", "fvd")
SYNC_KEYS = ("av_offset_ms", "av_sync_corr", "av_sync_p", "av_sync_z", "av_sync_null_p95")
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
    av_sync_p: float | None = None                   # empirical p-value of av_sync_corr among the null scores
    av_sync_z: float | None = None                   # its z-score against them
    av_sync_null_p95: float | None = None            # their 95th percentile
    av_sync_meaningful: bool | None = None           # False: the clip is shorter than MIN_SYNC_SECONDS
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
    fid: float | None = None                         # Frechet Inception Distance to the real frames
    fvd: float | None = None                         # Frechet Video Distance to the real clips
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
        if key == "av_sync_meaningful":
            return self.av_sync_meaningful
        if key == "jitter_eyes":
            if not self.jitter:
                return None
            return (self.jitter["left_eye"] + self.jitter["right_eye"]) / 2
        return _num(getattr(self, key))

    def to_dict(self) -> dict:
        """JSON-ready: the weight-free keys always (null when not computable), learned ones when computed."""
        out = {"source": self.source, "frames": self.frames, "fps": self.fps, "seconds": round(self.seconds, 3),
               "av_offset_ms": _num(self.av_offset_ms), "av_sync_corr": _num(self.av_sync_corr),
               "av_sync_p": _num(self.av_sync_p), "av_sync_z": _num(self.av_sync_z),
               "av_sync_null_p95": _num(self.av_sync_null_p95), "av_sync_meaningful": self.av_sync_meaningful,
               "av_sync_min_seconds": MIN_SYNC_SECONDS,
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
        """Flat numeric values (for TensorBoard / the training log); missing metrics are left out, and so are the
        lip-sync ones of a clip too short for them to mean anything (``av_sync_meaningful`` False)."""
        out = {}
        sync = SYNC_KEYS if self.av_sync_meaningful else ()
        for key in (*sync, "flicker", "face_rate", "shape_drift", "shape_drift_max", *LEARNED):
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
    if key == "av_sync_p":
        return f"{v:.3f}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def table(reports: list[EvalReport], names: list[str] | None = None) -> str:
    """A text table, one column per report (rows whose metric no report has are left out)."""
    labels = _labels(names or [r.source for r in reports])
    rows = [(k, label, better) for k, label, better in ROWS if any(r.value(k) is not None for r in reports)]
    head = ["metric"] + labels + ["better"]
    body = [[label] + [_fmt(k, r.value(k)) + _mark(r, k) for r in reports] + [better] for k, label, better in rows]
    body.append(["frames / fps"] + [f"{r.frames} @ {r.fps:g}" for r in reports] + [""])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)).rstrip()
             for row in [head] + body]
    lines.insert(1, "-" * len(lines[0]))
    shared = [t for t in dict.fromkeys(reports[0].notes) if all(t in r.notes for r in reports[1:])] if reports else []
    lines += [f"note: {t}" for t in shared]  # about every clip: said once
    for r, n in zip(reports, labels):
        lines += [f"note ({n}): {t}" for t in dict.fromkeys(r.notes) if t not in shared]
    return "\n".join(lines)


def distinct_notes(reports: list[EvalReport]) -> list[str]:
    """Every note of the reports, each once (a note every clip shares is said once), in the order they come."""
    return list(dict.fromkeys(t for r in reports for t in r.notes))


def _mark(r: EvalReport, key: str) -> str:
    """' ?' after every value of an unreliable report, ' !' after the lip-sync values of a clip too short for them."""
    if r.value(key) is None:
        return ""
    flag = " !" if key in SYNC_KEYS and r.av_sync_meaningful is False else ""
    return flag + ("" if r.reliable else " ?")


def _short(name: str, limit: int = 28, parts: int = 1) -> str:
    path = str(name).replace("\\", "/").rstrip("/")
    name = "/".join(path.split("/")[-parts:]) or str(name)
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def _labels(names: list) -> list[str]:
    """Each clip's column and note label: its file name; two runs' outputs of the same name (runs/a/clip.mp4,
    runs/b/clip.mp4) with their folder, when that tells them apart (the same file twice keeps its name)."""
    labels = [_short(n) for n in names]
    if len(set(labels)) < len(labels):
        longer = [_short(n, 40, parts=2) for n in names]
        if len(set(longer)) > len(set(labels)):
            return longer
    return labels
