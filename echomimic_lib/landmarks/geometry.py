"""Face geometry (canonical metric mesh + pose matrix) from face-mesh landmarks, in numpy.

Why this module exists: EchoMimic V1's ``lmks3d`` is the ``vertex_buffer`` of MediaPipe's
face-geometry mesh, which the reference obtained from a patched copy of MediaPipe's Python
FaceLandmarker. The Tasks API of MediaPipe 1.x returns the 478 normalised landmarks and the 4x4
facial transformation matrix, but not that mesh. The mesh is a deterministic function of the
landmarks, the image size, a perspective camera and the geometry metadata (canonical face model +
Procrustes landmark weights), and the metadata ships inside the ``.task`` bundle
(``geometry_pipeline_metadata_landmarks.binarypb``). So we recompute it the way MediaPipe's
geometry pipeline documents it (``face_geometry/geometry_pipeline.cc``, "screen to metric"):

1. project screen landmarks onto the near plane of a perspective camera (vertical fov 63 deg,
   near 1, far 10000; frustum width follows the image aspect ratio), y flipped, z scaled like x;
2. estimate the face scale with a weighted orthogonal Procrustes fit (rotation + uniform scale +
   translation) of the canonical model onto the landmarks (handedness flipped), twice: first on the
   projected points, then after moving z to the near plane, rescaling it and unprojecting x/y;
3. unproject with the total scale -> metric landmarks in camera space;
4. fit the pose matrix (canonical -> camera) with the same Procrustes solver;
5. the mesh = metric landmarks mapped back by the inverse pose (the face's own shape in the
   canonical frame). That is ``lmks3d``; the pose is the facial transformation matrix.

Only the first 468 landmarks (no iris) enter the pipeline. MediaPipe runs this in float32; we run
it in float64, so results agree with MediaPipe's to float32 precision (about 1e-5 relative),
checked in the tests against the Tasks transformation matrix and the motion_sync fixture.
"""
from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass

import numpy as np

from ..errors import EchoMimicError

METADATA_NAME = "geometry_pipeline_metadata_landmarks.binarypb"
MAX_METADATA_BYTES = 1 << 20  # read and parsed whole (the real one: 19 KB)
FOV_DEGREES = 63.0
NEAR = 1.0
FAR = 10000.0


@dataclass(frozen=True)
class GeometryMetadata:
    canonical: np.ndarray      # (468, 3) canonical metric face model
    weights: np.ndarray        # (468,) Procrustes landmark weights (0 for most points)
    triangles: np.ndarray      # (T, 3) mesh triangles (0-based)


# ---- minimal protobuf wire-format reader (the schema is three small messages) ----

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def parse_metadata(data: bytes) -> GeometryMetadata:
    """Parse ``GeometryPipelineMetadata`` (canonical_mesh = field 1, procrustes_landmark_basis =
    field 2 of {landmark_id = 1, weight = 2}); Mesh3d: vertex_buffer = 3 (packed float, 5 per
    vertex: x y z u v), index_buffer = 4 (packed uint32)."""
    vertices: list[float] = []
    indices: list[int] = []
    basis: list[tuple[int, float]] = []
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            for f, w, v in _fields(value):
                if f == 3 and w == 2:
                    vertices.extend(np.frombuffer(v, dtype="<f4").tolist())
                elif f == 3 and w == 5:
                    vertices.append(float(np.frombuffer(v, dtype="<f4")[0]))
                elif f == 4 and w == 2:
                    indices.extend(_packed_varints(v))
                elif f == 4 and w == 0:
                    indices.append(v)
        elif field == 2 and wire == 2:
            lid, weight = 0, 0.0
            for f, w, v in _fields(value):
                if f == 1 and w == 0:
                    lid = v
                elif f == 2 and w == 5:
                    weight = float(np.frombuffer(v, dtype="<f4")[0])
            basis.append((lid, weight))
    vb = np.asarray(vertices, dtype=np.float64)
    if vb.size == 0 or vb.size % 5:
        raise EchoMimicError("face-geometry metadata: the canonical mesh is missing or malformed.")
    canonical = vb.reshape(-1, 5)[:, :3]
    weights = np.zeros(len(canonical))
    for lid, w in basis:
        if lid >= len(canonical):
            raise EchoMimicError(f"face-geometry metadata: landmark id {lid} out of range.")
        weights[lid] = w
    tris = np.asarray(indices, dtype=np.int64).reshape(-1, 3)
    return GeometryMetadata(canonical, weights, tris)


@functools.lru_cache(maxsize=4)
def load_metadata(task_path: str) -> GeometryMetadata:
    """Read the geometry metadata bundled in a ``face_landmarker*.task`` file."""
    try:
        with zipfile.ZipFile(task_path) as zf:
            size = zf.getinfo(METADATA_NAME).file_size  # what reading unpacks (zipfile stops there): tens of KB when real
            if size > MAX_METADATA_BYTES:
                raise EchoMimicError(f"{task_path}: '{METADATA_NAME}' would unpack to {size} bytes (a real one is tens of "
                                     "KB): not MediaPipe's face landmarker bundle (a zip bomb?). Download the official "
                                     "face_landmarker .task file again.")
            data = zf.read(METADATA_NAME)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise EchoMimicError(
            f"{task_path}: cannot read '{METADATA_NAME}' from the FaceLandmarker bundle ({exc}); use the "
            "official face_landmarker .task file.") from exc
    return parse_metadata(data)


# ---- weighted orthogonal Procrustes (rotation + uniform scale + translation) ----

def weighted_procrustes(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """4x4 similarity transform M minimising sum_i w_i |M source_i - target_i|^2; points are (N, 3)."""
    sw = np.sqrt(weights)[:, None]
    ws, wt = source * sw, target * sw
    total = float(np.sum(weights))
    src_com = np.sum(ws * sw, axis=0) / total
    centred = ws - src_com[None, :] * sw
    design = wt.T @ centred
    u, _, vt = np.linalg.svd(design)
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] *= -1
    rot = u @ vt
    scale = float(np.sum((centred @ rot.T) * wt) / np.sum(centred * ws))
    rs = scale * rot
    translation = np.sum((wt - ws @ rs.T) * sw, axis=0) / total
    m = np.eye(4)
    m[:3, :3] = rs
    m[:3, 3] = translation
    return m


def _frustum(width: int, height: int) -> tuple[float, float, float, float]:
    h_near = 2.0 * NEAR * np.tan(0.5 * np.deg2rad(FOV_DEGREES))
    w_near = width * h_near / height
    return -0.5 * w_near, 0.5 * w_near, -0.5 * h_near, 0.5 * h_near  # left, right, bottom, top


def face_geometry(lmks: np.ndarray, image_size: tuple[int, int], meta: GeometryMetadata) -> tuple[np.ndarray, np.ndarray]:
    """(mesh (468, 3), pose (4, 4)) from normalised landmarks (>= 468, 3) of an image of size (W, H)."""
    n = meta.canonical.shape[0]
    pts = np.asarray(lmks, dtype=np.float64)[:n, :3]
    if pts.shape != (n, 3):
        raise EchoMimicError(f"face geometry needs {n} landmarks with x, y, z; got shape {np.shape(lmks)}.")
    left, right, bottom, top = _frustum(int(image_size[0]), int(image_size[1]))
    scr = pts.copy()
    scr[:, 1] = 1.0 - scr[:, 1]
    scr[:, 0] = scr[:, 0] * (right - left) + left
    scr[:, 1] = scr[:, 1] * (top - bottom) + bottom
    scr[:, 2] = scr[:, 2] * (right - left)
    depth_offset = float(scr[:, 2].mean())

    def flip(p):
        q = p.copy()
        q[:, 2] *= -1
        return q

    def rescale_unproject(p, scale):
        q = p.copy()
        q[:, 2] = (q[:, 2] - depth_offset + NEAR) / scale
        q[:, 0] = q[:, 0] * q[:, 2] / NEAR
        q[:, 1] = q[:, 1] * q[:, 2] / NEAR
        return flip(q)

    def est_scale(p):
        return float(np.linalg.norm(weighted_procrustes(meta.canonical, p, meta.weights)[:3, 0]))

    s1 = est_scale(flip(scr))
    s2 = est_scale(rescale_unproject(scr, s1))
    metric = rescale_unproject(scr, s1 * s2)
    pose = weighted_procrustes(meta.canonical, metric, meta.weights)
    inv = np.linalg.inv(pose)
    mesh = metric @ inv[:3, :3].T + inv[:3, 3]
    return mesh, pose


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (scale s, rotation R, translation t) with ``s * src @ R.T + t ~ dst``
    (Umeyama's method, no reflection). ``src``, ``dst``: (N, 2)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a)
    d = np.ones(len(sig))
    if np.linalg.det(u @ vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    var = float((a ** 2).sum())
    scale = float((sig * d).sum() / var) if var > 0 else 1.0
    return scale, rot, mu_d - scale * mu_s @ rot.T
