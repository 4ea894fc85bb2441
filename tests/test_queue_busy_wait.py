"""A busy server's Retry-After is a number of seconds to wait: NaN or infinity in it falls back to the doubling wait
(time.sleep(nan) raised a raw ValueError in the middle of a queue run)."""
import math

import pytest

from echomimic_lib.jobs import queue_client
from echomimic_lib.jobs.queue_client import QueueError


def _busy(retry_after):
    err = QueueError("busy")
    err.code, err.retry_after = 503, retry_after
    return err


@pytest.mark.parametrize("header", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_a_retry_after_that_is_no_finite_number_waits_the_doubling_time(header):
    wait = queue_client._busy_wait(_busy(header), 2)
    assert math.isfinite(wait) and wait == 4.0


def test_a_retry_after_in_seconds_is_kept_within_a_minute():
    assert queue_client._busy_wait(_busy("3"), 0) == 3.0
    assert queue_client._busy_wait(_busy("600"), 0) == 60.0
    assert queue_client._busy_wait(_busy("-5"), 0) == 0.0
