"""A picture input given a batch (a video's frames linked to the Sampler's reference, a multi-frame Load Image) took
its first picture without a word; the log now says so, once per input, and a single picture stays silent."""
from __future__ import annotations

import logging

import numpy as np
import torch
from tests._pack import sub


def test_a_batch_given_to_a_picture_input_is_said_and_its_first_picture_used(caplog):
    first_image = sub("nodes.payloads").first_image
    batch = torch.rand(5, 16, 16, 3)
    with caplog.at_level(logging.WARNING):
        got = first_image(batch, "reference")
    assert np.allclose(got.astype(np.float32) / 255, batch[0].numpy(), atol=1 / 255 + 1e-6)
    said = [r.getMessage() for r in caplog.records if "batch of 5 pictures" in r.getMessage()]
    assert said == ["reference: a batch of 5 pictures; the first is used (link one picture, e.g. through core's "
                    "ImageFromBatch)."]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        first_image(batch[:1], "reference")
    assert not [r for r in caplog.records if "pictures" in r.getMessage()]
