"""Face-mesh landmark facts as data: edge chains, colours, part index sets, V1 presets.

Indices follow MediaPipe's 478-point face mesh (468 mesh vertices + 10 iris points: 468 = right
pupil, 469-472 right iris ring, 473 = left pupil, 474-477 left iris ring; "left"/"right" are the
subject's). Colours are the EchoMimic V1 visualiser's tuples, in the channel order of the array fed
to the condition encoder (the pipeline uses them as RGB).

The drawing order matters where differently coloured lines overlap, so ``draw_order`` below is the
order in which the V1 visualiser draws its groups; within one group all lines have one colour.
"""
from __future__ import annotations

from typing import Iterable

Edge = tuple[int, int]


def _chain(*idx: int) -> tuple[Edge, ...]:
    return tuple(zip(idx[:-1], idx[1:]))


# --- MediaPipe face-mesh contours (same index pairs as MediaPipe's published connection lists) ---
RIGHT_EYE: tuple[Edge, ...] = _chain(33, 7, 163, 144, 145, 153, 154, 155, 133) + _chain(33, 246, 161, 160, 159, 158, 157, 173, 133)
LEFT_EYE: tuple[Edge, ...] = _chain(263, 249, 390, 373, 374, 380, 381, 382, 362) + _chain(263, 466, 388, 387, 386, 385, 384, 398, 362)
RIGHT_EYEBROW: tuple[Edge, ...] = _chain(46, 53, 52, 65, 55) + _chain(70, 63, 105, 66, 107)
LEFT_EYEBROW: tuple[Edge, ...] = _chain(276, 283, 282, 295, 285) + _chain(300, 293, 334, 296, 336)
RIGHT_IRIS: tuple[Edge, ...] = _chain(469, 470, 471, 472, 469)
LEFT_IRIS: tuple[Edge, ...] = _chain(474, 475, 476, 477, 474)
FACE_OVAL: tuple[Edge, ...] = _chain(
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148,
    176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109, 10,
)
# V1 "custom" face oval: the lower face outline without the forehead (sorted edge list).
CUSTOM_FACE_OVAL: tuple[Edge, ...] = tuple(sorted([
    (176, 149), (150, 136), (356, 454), (58, 132), (152, 148), (361, 288), (251, 389), (132, 93),
    (389, 356), (400, 377), (136, 172), (377, 152), (323, 361), (172, 58), (454, 323), (365, 379),
    (379, 378), (148, 176), (93, 234), (397, 365), (149, 150), (288, 397), (234, 127), (378, 400),
    (127, 162), (162, 21),
]))

# --- V1 lip chains: 8 polylines, each with its own colour ---
LIPS_OUTER_BOTTOM_LEFT = _chain(61, 146, 91, 181, 84, 17)
LIPS_OUTER_BOTTOM_RIGHT = _chain(17, 314, 405, 321, 375, 291)
LIPS_INNER_BOTTOM_LEFT = _chain(78, 95, 88, 178, 87, 14)
LIPS_INNER_BOTTOM_RIGHT = _chain(14, 317, 402, 318, 324, 308)
LIPS_OUTER_TOP_LEFT = _chain(61, 185, 40, 39, 37, 0)
LIPS_OUTER_TOP_RIGHT = _chain(0, 267, 269, 270, 409, 291)
LIPS_INNER_TOP_LEFT = _chain(78, 191, 80, 81, 82, 13)
LIPS_INNER_TOP_RIGHT = _chain(13, 312, 311, 310, 415, 308)
LIP_CHAINS: tuple[tuple[Edge, ...], ...] = (
    LIPS_OUTER_BOTTOM_LEFT, LIPS_OUTER_BOTTOM_RIGHT, LIPS_INNER_BOTTOM_LEFT, LIPS_INNER_BOTTOM_RIGHT,
    LIPS_OUTER_TOP_LEFT, LIPS_OUTER_TOP_RIGHT, LIPS_INNER_TOP_LEFT, LIPS_INNER_TOP_RIGHT,
)

# --- colours (V1 visualiser) ---
COLOR_HEAD = (10, 200, 10)
COLOR_RIGHT_EYE = (10, 200, 180)
COLOR_LEFT_EYE = (180, 200, 10)
COLOR_RIGHT_EYEBROW = (10, 220, 180)
COLOR_LEFT_EYEBROW = (180, 220, 10)
COLOR_RIGHT_IRIS = (10, 200, 250)
COLOR_LEFT_IRIS = (250, 200, 10)
COLOR_NOSE = (200, 200, 200)
LIP_COLORS = (
    (10, 180, 20), (20, 10, 180),      # outer bottom left / right
    (100, 100, 30), (100, 150, 50),    # inner bottom left / right
    (20, 80, 100), (80, 100, 20),      # outer top left / right
    (120, 100, 200), (150, 120, 100),  # inner top left / right
)

RIGHT_PUPIL = 468
LEFT_PUPIL = 473
NOSE_TIP = 4
SQUARE_HALF_WIDTH = 3  # 6x6 squares at the pupils and the nose tip

# --- selectable parts ---
PARTS = ("face_oval", "eyes", "brows", "iris", "mouth", "pupils", "nose")
POSE_MODE_PARTS = frozenset({"eyes", "brows", "pupils", "nose"})            # V1 "audio + selected landmarks"
LANDMARK_MODE_PARTS = POSE_MODE_PARTS | {"mouth"}                           # pure landmark driving
REFERENCE_DEFAULT_PARTS = LANDMARK_MODE_PARTS | {"iris"}                    # V1 visualiser defaults
_ALIASES = {"eyebrows": "brows", "eyebrow": "brows", "lips": "mouth", "mouse": "mouth", "head": "face_oval",
            "oval": "face_oval", "pupil": "pupils", "eye": "eyes", "nose_tip": "nose"}
PRESETS = {"pose": POSE_MODE_PARTS, "selected": POSE_MODE_PARTS, "landmarks": LANDMARK_MODE_PARTS,
           "defaults": REFERENCE_DEFAULT_PARTS, "all": frozenset(PARTS)}


def normalize_parts(parts: str | Iterable[str] | None) -> frozenset[str]:
    """A part selection as a set of canonical names. Accepts a preset name ("pose", "selected",
    "landmarks", "defaults", "all"), a comma-separated string, or an iterable of names (a preset among them adds its
    parts: "landmarks, mouth")."""
    if parts is None:
        return POSE_MODE_PARTS
    if isinstance(parts, str):
        key = parts.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        parts = [p for p in key.replace("+", ",").split(",") if p.strip()]
    out = set()
    for p in parts:
        name = _ALIASES.get(p.strip().lower(), p.strip().lower())
        if name in PRESETS:  # a preset in a list ("landmarks, mouth"): its parts (it said "unknown part 'landmarks'")
            out.update(PRESETS[name])
            continue
        if name not in PARTS:
            hint = " (separate the parts with commas: 'eyes, mouth')" if any(c in name for c in "; \t|/") else ""
            raise ValueError(f"unknown landmark part '{p}'{hint}; choose from {', '.join(PARTS)} or a preset "
                             f"({', '.join(PRESETS)}).")
        out.add(name)
    return frozenset(out)


def edge_groups(parts: Iterable[str], forehead_oval: bool = False) -> list[tuple[tuple[Edge, ...], tuple[int, int, int]]]:
    """(edges, colour) groups for a part selection, in the V1 visualiser's drawing order.
    ``forehead_oval`` draws MediaPipe's full face oval instead of the V1 lower-face oval."""
    parts = frozenset(parts)
    groups = []
    if "face_oval" in parts:
        groups.append((FACE_OVAL if forehead_oval else CUSTOM_FACE_OVAL, COLOR_HEAD))
    if "eyes" in parts:
        groups += [(LEFT_EYE, COLOR_LEFT_EYE), (RIGHT_EYE, COLOR_RIGHT_EYE)]
    if "brows" in parts:
        groups += [(LEFT_EYEBROW, COLOR_LEFT_EYEBROW), (RIGHT_EYEBROW, COLOR_RIGHT_EYEBROW)]
    if "iris" in parts:
        groups += [(LEFT_IRIS, COLOR_LEFT_IRIS), (RIGHT_IRIS, COLOR_RIGHT_IRIS)]
    if "mouth" in parts:
        groups += list(zip(LIP_CHAINS, LIP_COLORS))
    return groups


def point_squares(parts: Iterable[str]) -> list[tuple[int, tuple[int, int, int]]]:
    """(landmark index, colour) of the filled squares, in drawing order (pupils, then nose tip)."""
    parts = frozenset(parts)
    out = []
    if "pupils" in parts:
        out += [(RIGHT_PUPIL, COLOR_RIGHT_IRIS), (LEFT_PUPIL, COLOR_LEFT_IRIS)]
    if "nose" in parts:
        out.append((NOSE_TIP, COLOR_NOSE))
    return out


def _vertices(edges: Iterable[Edge]) -> list[int]:
    return sorted({i for e in edges for i in e})


# --- motion-sync part index sets (V1 ``LANDMARK_IDXES_DICT``; order kept, pupil appended last) ---
MOTION_PARTS: dict[str, list[int]] = {
    "left_eye": _vertices(LEFT_EYE) + [LEFT_PUPIL],
    "right_eye": _vertices(RIGHT_EYE) + [RIGHT_PUPIL],
    "mouth": _vertices(e for chain in LIP_CHAINS for e in chain),
    "nose": [1, 4, 5, 44, 45, 51, 220, 274, 275, 281, 440],
    "left_brow": _vertices(LEFT_EYEBROW),
    "right_brow": _vertices(RIGHT_EYEBROW),
}
# eye-contour vertices (< 468) used to lift the iris points into the canonical mesh
EYE_CONTOUR: list[int] = sorted(set(_vertices(LEFT_EYE) + _vertices(RIGHT_EYE)))
# points that move little with speech or expression (forehead, nose bridge, eye corners, upper face oval):
# the head pose is taken from these when landmarks are stabilised (jitter metric, --stabilize)
RIGID: list[int] = sorted({10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 33, 133, 362,
                           263, 234, 454, 127, 356, 162, 389, 21, 251, 54, 284, 103, 332, 67, 297, 109, 338})
