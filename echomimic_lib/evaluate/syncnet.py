"""SyncNet LSE-C / LSE-D (Chung & Zisserman 2016; the ``syncnet_v2.model`` of joonson/syncnet_python), built here in
PyTorch and fed the way that repository's evaluation computes the two scores:

- video at 25 fps (other rates are resampled by picking the nearest frame, as ffmpeg ``-r 25`` does); per frame
  a face crop: box half-size ``s = max(w, h) / 2`` and centre, each median-filtered over 13 frames (zero padded),
  the frame padded by ``int(s * 1.8)`` pixels of value 110, rows ``cy - s .. cy + 1.8 s`` and columns
  ``cx - 1.4 s .. cx + 1.4 s`` (crop scale 0.4), resized to 224 x 224, BGR, raw 0-255 values. Our boxes come from
  the face-mesh landmarks instead of the S3FD detector;
- audio: 16 kHz mono as 16-bit sample values, MFCC (:mod:`.mfcc`), 100 frames per second;
- frame ``i`` pairs the 5 video frames ``i .. i+4`` with MFCC columns ``4 i .. 4 i + 20``, for
  ``i < min(frames, samples // 640) - 5``; the audio feature of frame ``i + d`` for ``d`` in -15..15 (zero
  features past the ends) gives a distance curve, averaged over frames: LSE-D is its minimum, LSE-C its median
  minus its minimum, and SyncNet's "AV offset" is ``15 - argmin`` (in frames at 25 fps).

``protocol="published"`` adds the face-track rules of that repository's ``run_pipeline.py`` that can be checked on a
single clip scored as one track: more than 100 frames at 25 fps (``--min_track``), a mean box width or height above
100 px (``--min_face_size``), no run of more than 25 frames without a face (``--num_failed_det``). A clip that breaks
one is refused with the reason (the published pipeline would not score it). What cannot be matched: the S3FD
detector (boxes here come from the face mesh), the re-encodes (MPEG-4 at ``-qscale:v 2``, JPEG frames, XVID crops)
and the scene-cut split (PySceneDetect) -- see docs/evaluation.md.

Weights are read with ``torch.load(weights_only=True)`` (or safetensors), so a file that would run code is
refused; the BatchNorm ``num_batches_tracked`` buffers absent from the 2017 file are not required.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._lazy import cv2
from ..errors import EchoMimicError, MissingWeightsError, WeightsError
from ..io.weights import describe_mismatch, read_state_dict
from .mfcc import mfcc

log = logging.getLogger(__name__)

FILE_NAME = "syncnet_v2.model"
SOURCE = "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
FPS = 25.0
CROP = 224
CROP_SCALE = 0.4
PAD_VALUE = 110
SMOOTH = 13
VSHIFT = 15
BATCH = 20
PROTOCOLS = ("default", "published")
MIN_TRACK = 100        # run_pipeline.py --min_track: a track must have more frames than this
MIN_FACE_SIZE = 100    # --min_face_size: mean box width or height (px) must be above this
NUM_FAILED_DET = 25    # --num_failed_det: a track ends after more missed detections than this


def _bn_relu(conv: nn.Module, ch: int, bn=nn.BatchNorm2d) -> list[nn.Module]:
    return [conv, bn(ch), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """The two-stream SyncNet (audio MFCC 1x13x20 -> 1024, lips 3x5x224x224 -> 1024); module names and
    indices match the released state dict."""

    def __init__(self, embed: int = 1024):
        super().__init__()
        c2, c3 = nn.Conv2d, nn.Conv3d
        self.netcnnaud = nn.Sequential(
            *_bn_relu(c2(1, 64, 3, 1, 1), 64), nn.MaxPool2d(1, 1),
            *_bn_relu(c2(64, 192, 3, 1, 1), 192), nn.MaxPool2d(3, (1, 2)),
            *_bn_relu(c2(192, 384, 3, padding=1), 384),
            *_bn_relu(c2(384, 256, 3, padding=1), 256),
            *_bn_relu(c2(256, 256, 3, padding=1), 256), nn.MaxPool2d(3, 2),
            *_bn_relu(c2(256, 512, (5, 4)), 512),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))
        b3 = nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(
            *_bn_relu(c3(3, 96, (5, 7, 7), (1, 2, 2)), 96, b3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), 256, b3), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3),
            *_bn_relu(c3(256, 256, (1, 3, 3), padding=(0, 1, 1)), 256, b3), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_bn_relu(c3(256, 512, (1, 6, 6)), 512, b3),
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:   # (B, 1, 13, 20)
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:   # (B, 3, 5, 224, 224)
        return self.netfclip(self.netcnnlip(x).flatten(1))


def missing_message(path, folder=None, then: str = "LSE-C / LSE-D are left out, the weight-free metrics are still "
                    "reported") -> str:
    """``then``: what happens meanwhile (``--protocol published`` stops instead of reporting)."""
    where = f"{path}" + (f" (or into {folder})" if folder else "")
    return (f"SyncNet weights not found at {path}. Download '{FILE_NAME}' from {SOURCE} (joonson/syncnet_python, "
            f"download_model.sh) and put it at {where}; {then}.")


def load_syncnet(path: str | Path, device: torch.device | str = "cpu") -> SyncNet:
    """SyncNet with the weights of ``path`` (``syncnet_v2.model`` format: a state dict), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(missing_message(path), [str(path)])
    sd = read_state_dict(path)
    net = SyncNet()
    want = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    have = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    problem = describe_mismatch(want, have, f"{path} (SyncNet)")
    if problem:
        raise WeightsError(f"{problem}\nUse the released {FILE_NAME} ({SOURCE}).")
    net.load_state_dict(have, strict=False)
    return net.to(device).eval()


def frame_indices_25(num_frames: int, fps: float) -> np.ndarray:
    """Source frame for each 25-fps output frame (nearest in time)."""
    count = max(1, int(round(num_frames * FPS / float(fps))))
    return np.clip(np.round(np.arange(count) * float(fps) / FPS).astype(np.int64), 0, num_frames - 1)


def _medfilt(x: np.ndarray, k: int = SMOOTH) -> np.ndarray:
    """scipy.signal.medfilt (zero padding), as the crop pipeline smooths the boxes; the kernel shrinks (odd) for
    tracks shorter than it, so the padding never outnumbers the values."""
    k = max(1, min(k, len(x) - (len(x) + 1) % 2))
    padded = np.concatenate([np.zeros(k // 2), x, np.zeros(k // 2)])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, k), axis=1)


class FaceCropper:
    """The SyncNet crop of each frame, from the (F, 4) x0, y0, x1, y1 face boxes of the frames to crop (median-filtered
    over the whole track first): ``crop(i, frame)`` is the (224, 224, 3) BGR uint8 crop of the ``i``-th of them."""

    def __init__(self, boxes: np.ndarray):
        boxes = np.asarray(boxes, dtype=np.float64)
        self.s = _medfilt(np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2)
        self.cy = _medfilt((boxes[:, 1] + boxes[:, 3]) / 2)
        self.cx = _medfilt((boxes[:, 0] + boxes[:, 2]) / 2)

    def crop(self, i: int, frame_rgb: np.ndarray) -> np.ndarray:
        bs = self.s[i]
        pad = int(bs * (1 + 2 * CROP_SCALE))
        img = np.pad(np.ascontiguousarray(frame_rgb[..., ::-1]), ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
        my, mx = self.cy[i] + pad, self.cx[i] + pad
        face = img[int(my - bs):int(my + bs * (1 + 2 * CROP_SCALE)), int(mx - bs * (1 + CROP_SCALE)):int(mx + bs * (1 + CROP_SCALE))]
        if face.size == 0:
            face = img
        return cv2.resize(face, (CROP, CROP))


def face_crops(frames_rgb: np.ndarray, boxes: np.ndarray, indices=None) -> np.ndarray:
    """(F, 224, 224, 3) BGR uint8 SyncNet crops of RGB frames (of ``frames_rgb[indices]`` when given), from the
    (F, 4) x0, y0, x1, y1 face boxes of those frames."""
    cropper = FaceCropper(boxes)
    indices = np.arange(len(cropper.s)) if indices is None else np.asarray(indices)
    out = np.empty((len(indices), CROP, CROP, 3), dtype=np.uint8)
    for i, k in enumerate(indices):
        out[i] = cropper.crop(i, frames_rgb[k])
    return out


def published_track_problem(boxes25: np.ndarray, valid25: np.ndarray | None) -> str | None:
    """Why the published pipeline would not score this clip as one face track (None: it would). ``boxes25``:
    (F, 4) face boxes of the 25-fps frames; ``valid25``: (F,) whether a face was found in each (None: all)."""
    if len(boxes25) <= MIN_TRACK:
        return (f"the published protocol scores only face tracks longer than {MIN_TRACK} frames at 25 fps (4 s); this "
                f"clip has {len(boxes25)}.")
    size = max(float(np.mean(boxes25[:, 2] - boxes25[:, 0])), float(np.mean(boxes25[:, 3] - boxes25[:, 1])))
    if size <= MIN_FACE_SIZE:
        return (f"the published protocol drops faces whose mean box is not above {MIN_FACE_SIZE} px; this face's is "
                f"{size:.0f} px (score a larger rendering, or use the default protocol).")
    if valid25 is not None and not valid25.all():
        gaps = np.diff(np.flatnonzero(np.concatenate([[True], np.asarray(valid25, bool), [True]]))) - 1
        if gaps.max() > NUM_FAILED_DET:
            return (f"the published protocol ends a face track after {NUM_FAILED_DET} frames without a face; this clip "
                    f"has a run of {int(gaps.max())}.")
    return None


@dataclass
class SyncNetScores:
    lse_c: float
    lse_d: float
    av_offset: int      # SyncNet's "AV offset" (frames at 25 fps, its own sign convention)
    frames: int         # 25-fps frames scored


class LseFeed:
    """:func:`lse_scores` fed one 25-fps crop at a time (``add``), for ``count`` crops in all: each batch of windows
    runs as soon as its crops are in, so only a batch's crops (``batch`` + 4) are held; ``result()`` after the last.
    Raises at once when the crops or the audio are too short."""

    def __init__(self, net: SyncNet, count: int, wave16k: np.ndarray, device: torch.device | str = "cpu",
                 vshift: int = VSHIFT, batch: int = BATCH):
        pcm = np.round(np.clip(np.asarray(wave16k, dtype=np.float64) * 32768.0, -32768, 32767))
        self.last = min(count, len(pcm) // 640) - 5
        if self.last < 1:
            raise EchoMimicError(f"SyncNet needs at least 6 frames at 25 fps and 0.24 s of audio; got {count} frames "
                                 f"and {len(pcm) / 16000:.2f} s.")
        self.cc = torch.from_numpy(mfcc(pcm, 16000).T.astype(np.float32))[None, None]  # (1, 1, 13, T)
        self.net, self.device, self.vshift, self.batch = net, device, vshift, batch
        self.needed = self.last + 4           # crops past this one are never used
        self.pending: list[np.ndarray] = []   # crops first .. first + len - 1
        self.first = self.start = self.seen = 0
        self.im_feat, self.cc_feat = [], []

    def add(self, crop_bgr: np.ndarray) -> None:
        if self.seen < self.needed:
            self.pending.append(np.asarray(crop_bgr))
        self.seen += 1
        self._run()

    @torch.no_grad()
    def _run(self) -> None:
        while self.start < self.last:
            end = min(self.last, self.start + self.batch)
            if self.first + len(self.pending) < end + 4:
                return
            lips = torch.stack([torch.from_numpy(np.stack(self.pending[i - self.first:i - self.first + 5])).permute(3, 0, 1, 2)
                                for i in range(self.start, end)]).to(self.device).float()  # (B, 3, 5, 224, 224)
            self.im_feat.append(self.net.forward_lip(lips).float().cpu())
            auds = torch.cat([self.cc[..., i * 4:i * 4 + 20] for i in range(self.start, end)]).to(self.device)
            self.cc_feat.append(self.net.forward_aud(auds).float().cpu())
            del self.pending[:end - self.first]
            self.first = self.start = end

    def result(self) -> SyncNetScores:
        self._run()
        if self.start < self.last:
            raise EchoMimicError(f"SyncNet: {self.seen} face crops came, {self.last + 5} were announced.")
        im, au = torch.cat(self.im_feat), torch.cat(self.cc_feat)
        vshift = self.vshift
        win = 2 * vshift + 1
        aup = torch.nn.functional.pad(au, (0, 0, vshift, vshift))
        dists = torch.stack([torch.nn.functional.pairwise_distance(im[[i]].repeat(win, 1), aup[i:i + win])
                             for i in range(len(im))], 1)
        mdist = dists.mean(1)
        minval, minidx = torch.min(mdist, 0)
        return SyncNetScores(float(torch.median(mdist) - minval), float(minval), int(vshift - minidx), int(self.last))


def lse_scores(net: SyncNet, crops_bgr: np.ndarray, wave16k: np.ndarray, device: torch.device | str = "cpu",
               vshift: int = VSHIFT, batch: int = BATCH) -> SyncNetScores:
    """LSE-C / LSE-D of 25-fps face crops (F, 224, 224, 3 BGR) against 16 kHz mono audio (-1..1 floats)."""
    feed = LseFeed(net, len(crops_bgr), wave16k, device, vshift, batch)
    for crop in crops_bgr:
        feed.add(crop)
    return feed.result()
