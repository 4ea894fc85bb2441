"""The lip-sync plot, drawn with OpenCV (no matplotlib): mouth opening and audio energy over time (each scaled to
zero mean, unit spread), and below it the correlation for every candidate offset with the best one marked."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._lazy import cv2
from ..errors import EchoMimicError
from ..io.file_safety import publish, temp_beside
from .sync import SyncResult

BG, GRID, AXIS, TEXT = (255, 255, 255), (225, 225, 225), (90, 90, 90), (30, 30, 30)
MOUTH, ENERGY, CORR, BEST = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)
FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-12 else x * 0.0


def _text(img, s, org, scale=0.45, color=TEXT, thick=1):
    cv2.putText(img, s, (int(org[0]), int(org[1])), FONT, scale, color, thick, 16)  # 16 = cv2.LINE_AA


def _panel(img, box, xs, series, xlim, ylim, xlabel, xticks, vline=None, yticks=()):
    x0, y0, x1, y1 = box
    cv2.rectangle(img, (x0, y0), (x1, y1), AXIS, 1)

    def px(x, y):
        u = x0 + (x - xlim[0]) / (xlim[1] - xlim[0]) * (x1 - x0)
        v = y1 - (y - ylim[0]) / (ylim[1] - ylim[0]) * (y1 - y0)
        return np.stack([u, v], axis=-1)

    for t in xticks:
        u = int(px(t, ylim[0])[0])
        cv2.line(img, (u, y0 + 1), (u, y1 - 1), GRID, 1)
        _text(img, f"{t:g}", (u - 10, y1 + 16), 0.4, AXIS)
    for t in yticks:
        v = int(px(xlim[0], t)[1])
        cv2.line(img, (x0 + 1, v), (x1 - 1, v), GRID, 1)
        _text(img, f"{round(t, 6) + 0.0:g}", (x0 - 34, v + 4), 0.4, AXIS)
    if vline is not None:
        u = int(px(vline, 0.0)[0])
        cv2.line(img, (u, y0 + 1), (u, y1 - 1), BEST, 1)
    for ys, color in series:
        ok = np.isfinite(ys)
        pts = np.round(px(xs[ok], np.clip(ys[ok], *ylim))).astype(np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, color, 2, 16)
    _text(img, xlabel, ((x0 + x1) // 2 - 40, y1 + 34), 0.45, AXIS)


def _ticks(lo: float, hi: float, n: int = 8) -> list[float]:
    raw = (hi - lo) / n
    step = next(s * 10 ** np.floor(np.log10(raw)) for s in (1, 2, 5, 10) if s * 10 ** np.floor(np.log10(raw)) >= raw)
    return [float(t) for t in np.arange(np.ceil(lo / step) * step, hi + 1e-9, step)]


def sync_plot(sync: SyncResult, title: str = "", size: tuple[int, int] = (960, 520)) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of a :class:`~.sync.SyncResult`."""
    w, h = size
    img = np.full((h, w, 3), BG, dtype=np.uint8)
    n = len(sync.mouth)
    t = np.arange(n) / sync.fps
    dur = max(float(t[-1]) if n else 1.0, 1e-3)
    top = (60, 40, w - 20, int(h * 0.55))
    _panel(img, top, t, [(_z(sync.energy), ENERGY), (_z(sync.mouth), MOUTH)], (0.0, dur), (-3.0, 3.0), "time (s)",
           _ticks(0.0, dur), yticks=(-2, 0, 2))
    _text(img, title or "lip sync: mouth opening vs audio energy", (60, 24), 0.55, TEXT, 1)
    _text(img, "mouth opening", (w - 300, 58), 0.45, MOUTH)
    _text(img, "audio energy", (w - 160, 58), 0.45, ENERGY)
    bottom = (60, int(h * 0.55) + 60, w - 20, h - 45)
    lags = np.asarray(sync.lags_ms, dtype=np.float64)
    curve = np.asarray(sync.curve, dtype=np.float64)
    finite = curve[np.isfinite(curve)]
    lo, hi = (min(0.0, float(finite.min())), max(0.1, float(finite.max()))) if finite.size else (-1.0, 1.0)
    pad = 0.1 * (hi - lo)
    _panel(img, bottom, lags, [(curve, CORR)], (float(lags[0]), float(lags[-1])), (lo - pad, hi + pad),
           "offset (ms), + = audio late", _ticks(float(lags[0]), float(lags[-1])), sync.offset_ms,
           yticks=_ticks(lo, hi, 4))
    _text(img, "correlation", (8, bottom[1] - 6), 0.4, AXIS)
    _text(img, "z-score", (8, top[1] - 6), 0.4, AXIS)
    label = "no defined correlation (silent audio or a still mouth)" if sync.offset_ms is None else \
        f"best offset {sync.offset_ms:+.0f} ms, correlation {sync.corr:.3f}"
    _text(img, label, (bottom[0] + 120, bottom[1] - 6), 0.45, BEST)
    return img


def save_png(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write a PNG atomically; an existing path that is not a regular file is never replaced."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise EchoMimicError(f"{path} exists and is not a regular file; choose another output path.")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise EchoMimicError(f"{path}: the plot could not be encoded as PNG.")
    tmp = temp_beside(path, ".partial.png")  # unique, beside a link's target (the link is written through)
    try:
        tmp.write_bytes(buf.tobytes())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def message_plot(text: str, size: tuple[int, int] = (960, 520)) -> np.ndarray:
    """A plot-sized image that says why there is no plot (wrapped text)."""
    w, h = size
    img = np.full((h, w, 3), BG, dtype=np.uint8)
    words, lines, line = str(text).split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > 90:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    for i, s in enumerate(lines[:12]):
        _text(img, s, (30, 60 + 24 * i), 0.5, TEXT)
    return img
