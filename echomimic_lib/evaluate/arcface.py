"""CSIM: cosine similarity of ArcFace identity embeddings between each frame and the reference, through a
user-supplied ArcFace recognition model in ONNX format (for example insightface's ``w600k_r50.onnx`` from its
``buffalo_l`` pack; check the licence of the model you use) run on ONNX Runtime.

Faces are aligned as ArcFace expects: the similarity transform that maps five points (eye centres, nose tip,
mouth corners, here from the face-mesh landmarks) onto the standard 112 x 112 template, then RGB scaled as
``(x - 127.5) / 127.5``. NCHW (1x3x112x112) and NHWC (1x112x112x3) inputs are both accepted, with a fixed or a
free batch size; the first output is the embedding.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from .._lazy import cv2
from ..errors import EchoMimicError, MissingWeightsError
from .face import similarity_fit

log = logging.getLogger(__name__)

SIZE = 112
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
EXAMPLE = "w600k_r50.onnx"


def missing_message(path, folder=None) -> str:
    where = f"{path}" + (f" (or into {folder})" if folder else "")
    return (f"ArcFace model not found at {path}. Put an ArcFace recognition model in ONNX format at {where} (for "
            f"example '{EXAMPLE}' from insightface's buffalo_l pack: input 1x3x112x112, a 512-d output); CSIM is left "
            "out, the weight-free metrics are still reported.")


def align(image_rgb: np.ndarray, points5: np.ndarray) -> np.ndarray:
    """112 x 112 RGB face aligned to the ArcFace template from five (x, y) points (see ``face.five_points``)."""
    s, r, t = similarity_fit(np.asarray(points5, dtype=np.float64), TEMPLATE)
    m = np.concatenate([s * r, t[:, None]], axis=1)
    return cv2.warpAffine(np.ascontiguousarray(image_rgb), m, (SIZE, SIZE), borderValue=0)


class ArcFace:
    """An ArcFace ONNX model: ``embed(faces)`` -> L2-normalised (N, D) embeddings of aligned 112 x 112 RGB faces."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        path = Path(path)
        if not path.is_file():
            raise MissingWeightsError(missing_message(path), [str(path)])
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        usable = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=usable)
        except Exception as exc:
            raise EchoMimicError(f"{path}: ONNX Runtime cannot load this model ({type(exc).__name__}: {exc}). Use an "
                                 "ArcFace recognition model exported to ONNX.") from exc
        inp = self.session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or (shape[1] != 3 and shape[3] != 3):
            raise EchoMimicError(f"{path}: input '{inp.name}' has shape {shape}; an ArcFace model takes 1x3x112x112 "
                                 "(or 1x112x112x3) images.")
        self.path, self.input_name, self.nhwc = path, inp.name, shape[1] != 3
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def embed(self, faces: np.ndarray) -> np.ndarray:
        x = (np.asarray(faces, dtype=np.float32) - 127.5) / 127.5          # (N, 112, 112, 3) RGB
        if not self.nhwc:
            x = x.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(x)
        step = self.fixed_batch or 32
        outs = [self.session.run(None, {self.input_name: x[i:i + step]})[0] for i in range(0, len(x), step)]
        emb = np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in outs])
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


class CsimFeed:
    """:func:`csim` fed one frame at a time (``add(frame, points5)``): the aligned faces are embedded a batch at a time
    (the model's own batch), so only one batch of 112 x 112 faces is held, and the embeddings (a few kB a frame);
    ``result()`` after the last frame."""

    def __init__(self, model: ArcFace, reference_rgb: np.ndarray, reference_points5: np.ndarray):
        self.model, self.step = model, model.fixed_batch or 32
        self.ref = model.embed(align(reference_rgb, reference_points5)[None])[0]
        self.faces: list[np.ndarray] = []
        self.embeddings: list[np.ndarray] = []

    def add(self, frame_rgb: np.ndarray, points5: np.ndarray) -> None:
        self.faces.append(align(frame_rgb, points5))
        if len(self.faces) == self.step:
            self._embed()

    def _embed(self) -> None:
        if self.faces:
            self.embeddings.append(self.model.embed(np.stack(self.faces)))
            self.faces = []

    def result(self) -> float:
        self._embed()
        return float((np.concatenate(self.embeddings) @ self.ref).mean())  # one product: the whole-array figure


def csim(model: ArcFace, frames_rgb: np.ndarray, frame_points5: np.ndarray, reference_rgb: np.ndarray,
         reference_points5: np.ndarray) -> float:
    """Mean cosine similarity of each frame's face embedding to the reference face's."""
    feed = CsimFeed(model, reference_rgb, reference_points5)
    for f, p in zip(frames_rgb, frame_points5):
        feed.add(f, p)
    return feed.result()
