"""A batch worker process with a fake Hugging Face Hub installed (for ``test_batch_v3_download``): a module of its own
so that a spawned process can import it by name."""
from __future__ import annotations

from tests.test_v3_download import FakeHub


def worker(files: dict, job, barrier, results) -> None:
    """A spawned worker process with the fake Hub installed: its first download waits for the other worker's."""
    import huggingface_hub
    import torch

    from echomimic_lib.jobs.batch.render import ModelCache
    from echomimic_lib.jobs.batch.workers import render_payload

    fake, waiting = FakeHub(files), [True]

    def download(**kw):
        if waiting:
            waiting.clear()
            barrier.wait(timeout=300)
        return fake(**kw)

    huggingface_hub.hf_hub_download = download
    torch.set_num_threads(1)
    results.put((job.name, render_payload(job, "cpu", ModelCache(), None), fake.calls))
