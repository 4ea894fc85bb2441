"""A workflow named on the command line may be a pipe (``echomimic queue <(jq ... wf.json)``): read as before the
shared JSON reader came; every other JSON the project reads still refuses a pipe without waiting on it."""
import json
import os
import threading

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.json_file import read_json
from echomimic_lib.jobs.queue_plan import load_workflow

WORKFLOW = {"1": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}}}


def _fifo_with_writer(tmp_path, text):
    fifo = tmp_path / "wf.json"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as fh:
            fh.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return fifo, writer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_workflow_given_as_a_pipe_is_read(tmp_path):
    fifo, writer = _fifo_with_writer(tmp_path, json.dumps(WORKFLOW))
    assert load_workflow(str(fifo)) == WORKFLOW
    writer.join(5)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_other_json_refuses_a_pipe_without_waiting_on_it(tmp_path):
    fifo = tmp_path / "state.json"
    os.mkfifo(fifo)  # no writer: a blocking open would wait forever
    with pytest.raises(EchoMimicError, match="pipe"):
        read_json(fifo)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_an_endless_pipe_given_as_the_workflow_is_refused_at_the_size_limit(tmp_path, monkeypatch):
    """``echomimic queue <(yes)`` read until the process died of memory; now it stops at the workflow size limit."""
    import echomimic_lib.jobs.queue_plan as queue_plan
    from echomimic_lib.jobs.queue_replies import QueueError

    monkeypatch.setattr(queue_plan, "MAX_WORKFLOW_BYTES", 4096)
    fifo = tmp_path / "wf.json"
    os.mkfifo(fifo)

    def write():  # more than the limit, as an endless producer would
        try:
            with open(fifo, "wb") as fh:
                for _ in range(64):
                    fh.write(b" " * 1024)
        except BrokenPipeError:  # the reader stopped at the limit
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(QueueError, match=r"over the 4096 bytes .*workflows/api"):
        load_workflow(str(fifo))
    writer.join(5)
