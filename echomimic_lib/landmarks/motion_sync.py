"""Part-aware motion sync: retarget a driving face's motion onto the reference face's shape (V1).

Inputs per face (driver frames and the reference): the normalised 478-point landmarks ``lmks``,
the canonical metric mesh ``lmks3d`` (468 points, see :mod:`.geometry`) and the 4x4 facial
transformation matrix ``trans_mat``. Output: (F, 478, 2) pixel coordinates in an ``image_size``
square image, to be drawn with ``normed=False`` and ``coord_size=(image_size, image_size)``.

Modes
-----
``"reference"`` (default; the released code's algorithm, pinned by the motion_sync fixture):

1. lift the 10 iris points into the canonical space: a 3D affine fitted from the eye-contour
   landmarks (normalised x, y, z) to their canonical vertices, applied to landmarks 468..477;
2. driver mean shape = mean of the driver's 478-point canonical shapes;
3. per part (left eye + pupil, right eye + pupil, mouth, nose, left brow, right brow) a 3D affine
   from the driver-mean part to the reference part;
4. head pose: ``T_i @ inv(T_0)`` (relative to the driver's first frame), box-smoothed over
   +-``pose_smooth`` frames, then composed with the reference pose (``smoothed @ T_ref``);
5. driver meshes box-smoothed over +-``mesh_smooth`` frames; each part replaced by its affine
   image, the other points (face oval, cheeks) stay the driver's;
6. fixed perspective projection (63 deg fov, near 1, far 10000, y flipped) to pixels.

``"paper"`` (the paper's description): a global affine from the driver mean (all 478 points) to
the reference is applied to the whole face first (so the face outline takes the reference's
shape too), then each part gets a residual affine fitted from the globally aligned driver-mean
part to the reference part, blended in with ``part_strength`` (1 = full residual). The released
code computes the global transform but never applies it.

Affines are fitted like scikit-image's ``estimate_transform('affine')``: Hartley-normalised
points, the homogeneous linear system solved by SVD (smallest right singular vector); the fixture
pins the results to 1e-6 px. All inputs are copied, never modified.
"""
from __future__ import annotations

import numpy as np

from ..errors import EchoMimicError
from .parts import EYE_CONTOUR, MOTION_PARTS

MODES = ("reference", "paper")


# ---------------- affine fitting ----------------

def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, d = points.shape
    centroid = points.mean(axis=0)
    rms = np.sqrt(np.sum((points - centroid) ** 2) / n)
    if rms == 0 or not np.isfinite(rms):
        raise EchoMimicError("cannot fit an affine transform: the points are all identical (degenerate landmarks).")
    s = np.sqrt(d) / rms
    t = np.eye(d + 1)
    t[:d, :d] *= s
    t[:d, d] = -s * centroid
    hom = np.hstack([points, np.ones((n, 1))]) @ t.T
    return t, hom[:, :d] / hom[:, d:]


def estimate_affine(src, dst) -> np.ndarray:
    """(d+1, d+1) affine matrix mapping ``src`` (N, d) onto ``dst`` (N, d) (normalised DLT)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < src.shape[1] + 1:
        raise EchoMimicError(f"affine fit needs matching (N, d) point sets with N > d; got {src.shape} and {dst.shape}.")
    n, d = src.shape
    ts, s = _normalise(src)
    td, t = _normalise(dst)
    a = np.zeros((n * d, d * (d + 1) + 1))
    for k in range(d):
        rows = slice(k * n, (k + 1) * n)
        a[rows, k * (d + 1): k * (d + 1) + d] = s
        a[rows, k * (d + 1) + d] = 1.0
        a[rows, -1] = t[:, k]
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    v = vt[-1]
    if np.isclose(v[-1], 0.0):
        raise EchoMimicError("cannot fit an affine transform: the landmarks are degenerate (collinear/coplanar).")
    h = np.eye(d + 1)
    h[:d, :] = (-v[:-1] / v[-1]).reshape(d, d + 1)
    h = np.linalg.inv(td) @ h @ ts
    return h / h[-1, -1]


def apply_affine(matrix: np.ndarray, points) -> np.ndarray:
    """Apply a (d+1, d+1) homogeneous matrix to (N, d) points."""
    pts = np.asarray(points, dtype=np.float64)
    d = matrix.shape[0] - 1
    out = np.hstack([pts, np.ones((pts.shape[0], 1))]) @ matrix.T
    w = out[:, d]
    w[w == 0] = np.finfo(float).eps
    return out[:, :d] / out[:, d:d + 1]


# ---------------- projection ----------------

def perspective_matrix(aspect: float = 1.0, fov_degrees: float = 63.0, near: float = 1.0, far: float = 10000.0) -> np.ndarray:
    """4x4 perspective matrix with a flipped y axis, used as ``row_points @ P`` (V1 convention).

    The 16 entries are filled in OpenGL's column-major order, rounded to float32, then the 4x4
    view is transposed, as in V1. With row vectors this puts ``far*near/(near-far)`` (about -1.0001)
    into the w column, so V1's projected faces are 0.01 % smaller than a textbook projection; the
    fixture pins this behaviour."""
    f = 1.0 / np.tan(np.deg2rad(fov_degrees) / 2.0)
    denom = 1.0 / (near - far)
    m = np.zeros(16, dtype=np.float32)
    m[0] = f / aspect
    m[5] = -f
    m[10] = (near + far) * denom
    m[11] = -1.0
    m[14] = far * near * denom
    return m.reshape(4, 4).T.astype(np.float64)


def project_points(points3d, trans_mat, image_size: int = 512) -> np.ndarray:
    """Project canonical points (N, 3) posed by ``trans_mat`` (4, 4) to pixel coordinates (N, 2)."""
    pts = np.asarray(points3d, dtype=np.float64)
    hom = np.hstack([pts, np.ones((pts.shape[0], 1))])
    clip = (hom @ np.asarray(trans_mat, dtype=np.float64).T) @ perspective_matrix(1.0)
    ndc = clip[:, :2] / clip[:, 3:4]
    return (ndc + 1.0) * 0.5 * float(image_size)


# ---------------- motion sync ----------------

def lift_iris(lmks, lmks3d) -> np.ndarray:
    """Append the 10 iris points (468..477), mapped into canonical space, to a 468-point mesh."""
    lmks = np.asarray(lmks, dtype=np.float64)
    lmks3d = np.asarray(lmks3d, dtype=np.float64)
    if lmks.shape[0] < 478 or lmks.shape[1] < 3 or lmks3d.shape != (468, 3):
        raise EchoMimicError(f"motion sync needs (478, 3) landmarks and a (468, 3) mesh per face; got "
                             f"{lmks.shape} and {lmks3d.shape}.")
    m = estimate_affine(lmks[EYE_CONTOUR, :3], lmks3d[EYE_CONTOUR])
    return np.vstack([lmks3d, apply_affine(m, lmks[468:478, :3])])


def _box_smooth(items: list[np.ndarray], margin: int) -> list[np.ndarray]:
    out = []
    for i in range(len(items)):
        idx = [j for j in range(i - margin, i + margin + 1) if 0 <= j < len(items)]
        acc = 0
        for j in idx:
            acc = acc + items[j]
        out.append(acc / len(idx))
    return out


def motion_sync(
    driver_lmks, driver_lmks3d, driver_trans_mat,
    reference_lmks, reference_lmks3d, reference_trans_mat,
    mode: str = "reference",
    pose_smooth: int = 2,
    mesh_smooth: int = 1,
    part_strength: float = 1.0,
    per_part: bool = True,
    image_size: int = 512,
) -> np.ndarray:
    """Retarget the driver's motion onto the reference face; returns (F, 478, 2) float64 pixels.

    driver_*: (F, 478, 3), (F, 468, 3), (F, 4, 4); reference_*: (478, 3), (468, 3), (4, 4).
    """
    if mode not in MODES:
        raise EchoMimicError(f"unknown motion-sync mode '{mode}'; choose 'reference' or 'paper'.")
    d_l = np.asarray(driver_lmks, dtype=np.float64)
    d_3 = np.asarray(driver_lmks3d, dtype=np.float64)
    d_t = np.asarray(driver_trans_mat, dtype=np.float64)
    if d_l.ndim != 3 or d_l.shape[0] == 0:
        raise EchoMimicError(f"driver landmarks must be a non-empty (F, 478, 3) array, got shape {d_l.shape}.")
    n = d_l.shape[0]
    if d_3.shape[0] != n or d_t.shape != (n, 4, 4):
        raise EchoMimicError(f"driver inputs disagree: {n} landmark frames, {d_3.shape[0]} meshes, "
                             f"trans_mat shape {d_t.shape}.")
    ref3d = lift_iris(reference_lmks, reference_lmks3d)
    ref_t = np.asarray(reference_trans_mat, dtype=np.float64).reshape(4, 4)
    drv3d = [lift_iris(d_l[i], d_3[i]) for i in range(n)]

    mean = 0
    for m in drv3d:
        mean = mean + m
    mean = mean / n

    glob = estimate_affine(mean, ref3d) if mode == "paper" else None
    base_mean = apply_affine(glob, mean) if glob is not None else mean
    part_mats = {name: estimate_affine(base_mean[idx], ref3d[idx]) for name, idx in MOTION_PARTS.items()}

    inv0 = np.linalg.inv(d_t[0])
    poses = _box_smooth([d_t[i] @ inv0 for i in range(n)], pose_smooth)
    meshes = _box_smooth(drv3d, mesh_smooth)

    out = np.empty((n, ref3d.shape[0], 2))
    for i in range(n):
        src = meshes[i] if glob is None else apply_affine(glob, meshes[i])
        aligned = src.copy()
        if per_part:
            for name, idx in MOTION_PARTS.items():
                moved = apply_affine(part_mats[name], src[idx])
                aligned[idx] = moved if mode == "reference" else src[idx] + part_strength * (moved - src[idx])
        out[i] = project_points(aligned, poses[i] @ ref_t, image_size)
    return out
