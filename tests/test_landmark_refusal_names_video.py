"""A driving video given by path whose landmarks cannot be extracted (no face in any frame, too many bad frames under
the 'fail' policy) is refused naming the video: ``echomimic landmarks`` / ``animate --landmarks VIDEO`` said
"no single face was found in any of the 30 frame(s)" with no file, which a script running many clips cannot place."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.video_io import write_video
from echomimic_lib.landmarks.conditions import extract_driving_landmarks
from echomimic_lib.landmarks.extractor import assemble_sequence


class _NoFace:
    """An extractor that finds no face in any frame (the real assembly of its per-frame results)."""

    def extract(self, frames, policy="interpolate", fps=None, progress=None, total=None):
        n = sum(1 for _ in frames)
        return assemble_sequence([None] * n, [0] * n, policy, (512, 512), fps)


def test_a_video_without_faces_is_refused_naming_the_video(tmp_path):
    video = write_video(tmp_path / "clip 07.mp4", np.zeros((3, 64, 64, 3), np.uint8), 24.0)
    with pytest.raises(EchoMimicError, match="no single face") as info:
        extract_driving_landmarks(str(video), extractor=_NoFace())
    assert str(video) in str(info.value) and type(info.value) is EchoMimicError


def test_frames_given_as_an_array_are_refused_as_before():
    with pytest.raises(EchoMimicError) as info:
        extract_driving_landmarks(np.zeros((2, 64, 64, 3), np.uint8), extractor=_NoFace())
    assert str(info.value).startswith("no single face")
