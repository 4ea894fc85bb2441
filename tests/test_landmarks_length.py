"""``animate --landmarks VIDEO --length N``: MediaPipe reads every frame of the driving video, not only the N rendered.

Stopping at the frames a short render shows would be faster, but it would change the render: the V1 motion sync
(:func:`echomimic_lib.landmarks.motion_sync.motion_sync`, ``sync="reference"``, the only one animate uses) fits each
part of the reference face to the driver's MEAN face over all its frames, so every drawn frame depends on the whole
video (so do ``--stabilize``'s medians and the filling of a frame without a face from the next good one). These tests
pin that a short render's conditions are exactly the first N of the whole video's (counted detector: the whole video
is read), and show that the first N frames alone would draw other conditions (the reason the whole video is read),
with the real MediaPipe model on the first frames of the shared driving video."""
from __future__ import annotations

import numpy as np
import pytest

from echomimic_lib.io.video_io import VideoFrames

pytest.importorskip("mediapipe")
cv2 = pytest.importorskip("cv2")

from echomimic_lib.landmarks.conditions import (  # noqa: E402
    conditions_from_driver, conditions_from_driving_video, driver_pixels, extract_driving_landmarks)
from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor  # noqa: E402

MP = "face_landmarker_v2_with_blendshapes.task"
FRAMES, N, SIZE = 30, 8, (256, 256)  # the driving clip, the rendered length


@pytest.fixture(scope="module")
def extractor(shared_data):
    ex = FaceLandmarkExtractor(model_path=shared_data / "mediapipe" / MP)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def clip(shared_data):
    return np.stack(list(VideoFrames(shared_data / "video" / "driving_a.mp4", max_frames=FRAMES)))


@pytest.fixture(scope="module")
def portrait(shared_data):
    return np.ascontiguousarray(cv2.imread(str(shared_data / "images" / "portrait_b.png"))[:, :, ::-1])


@pytest.fixture
def seen(monkeypatch):
    """Images handed to the landmark detector (a counting stand-in around the real one)."""
    log = []
    real = FaceLandmarkExtractor.detect

    def detect(self, image):
        log.append(np.asarray(image).shape)
        return real(self, image)

    monkeypatch.setattr(FaceLandmarkExtractor, "detect", detect)
    return log


@pytest.mark.parametrize("policy", ["ping-pong", "loop", "hold-last", "fail"])
def test_a_short_render_draws_the_first_frames_of_the_whole_video(extractor, clip, portrait, seen, policy):
    images, driver = conditions_from_driving_video(clip, portrait, N, SIZE, parts="landmarks", retime_policy=policy,
                                                   out_fps=24.0, extractor=extractor)
    assert len(seen) == FRAMES + 1  # every driving frame, and the reference once: the mean face needs them all
    assert len(driver) == FRAMES
    whole = conditions_from_driver(driver, portrait, FRAMES, SIZE, parts="landmarks", retime_policy="fail",
                                   out_fps=24.0, extractor=extractor)
    np.testing.assert_array_equal(images, whole[:N])


def test_the_first_frames_alone_would_draw_other_conditions(extractor, clip, portrait):
    full = extract_driving_landmarks(clip, src_fps=24.0, extractor=extractor)
    first = extract_driving_landmarks(clip[:N], src_fps=24.0, extractor=extractor)
    np.testing.assert_array_equal(first.lmks, full.lmks[:N])  # each frame is detected alone ...
    np.testing.assert_array_equal(driver_pixels(first, sync=None), driver_pixels(full, sync=None)[:N])
    synced_full = driver_pixels(full, portrait, "reference", extractor)[:N]
    synced_first = driver_pixels(first, portrait, "reference", extractor)
    assert np.abs(synced_full - synced_first).max() > 0.25  # ... but motion sync retargets by the whole video's mean face
