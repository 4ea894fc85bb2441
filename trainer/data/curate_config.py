"""The ``curate:`` section of ``prepare`` (thresholds of :mod:`.curate`'s filters; every filter off by default)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class CurateConfig:
    syncnet: str | None = None  # syncnet_v2.model; lip_sync filter on when given
    max_sync_offset: int = 3  # |AV offset| in frames at 25 fps
    min_sync_confidence: float = 3.0  # SyncNet confidence (LSE-C)
    max_yaw: float | None = None  # degrees; profile_view filter on when given
    max_profile_frames: float = 0.2  # fraction of frames beyond max_yaw tolerated
    max_camera_motion: float | None = None  # frame widths per second; camera_motion filter on when given
    face_margin: float = 0.5  # face box dilation (x its size on every side) excluded from the background
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return bool(self.syncnet) or self.max_yaw is not None or self.max_camera_motion is not None


def check_curate(c: CurateConfig) -> None:
    """Thresholds in range; raises ``ValueError`` naming the key."""
    if c.syncnet is not None and not Path(c.syncnet).is_file():
        raise ValueError(f"curate.syncnet {c.syncnet}: file not found; give syncnet_v2.model "
                         "(https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model) or leave the key out")
    if c.max_sync_offset < 0 or not math.isfinite(c.min_sync_confidence):
        raise ValueError("curate.max_sync_offset must be 0 or more and curate.min_sync_confidence a number")
    if c.max_yaw is not None and not 0 < c.max_yaw < 180:
        raise ValueError(f"curate.max_yaw {c.max_yaw}: an angle in degrees between 0 and 180 (e.g. 45)")
    if not 0 <= c.max_profile_frames <= 1:
        raise ValueError(f"curate.max_profile_frames {c.max_profile_frames}: a fraction of the frames in [0, 1]")
    if c.max_camera_motion is not None and not (math.isfinite(c.max_camera_motion) and c.max_camera_motion > 0):
        raise ValueError(f"curate.max_camera_motion {c.max_camera_motion}: frame widths per second, above 0 (e.g. 0.05)")
    if c.face_margin < 0:
        raise ValueError(f"curate.face_margin {c.face_margin}: 0 or more")
