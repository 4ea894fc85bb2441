"""Optional: the batch on a Ray cluster (``echomimic batch ... --backend ray [--ray-address HOST:PORT]``).

Why Ray: its actors are long-lived workers that keep state (our loaded models) and ask for a GPU each
(``num_gpus=1``), it schedules across machines, and it restarts an actor whose process or node died and
retries the task it was running (``max_restarts`` / ``max_task_retries``). ``ActorPool.map_unordered`` hands
the next job to whichever actor finishes first, so clips of different lengths balance. The output folder must
be one every node can write (a shared file system); ``results.jsonl`` is written by the driver only.

Start a cluster: ``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others (each with
this package and the weights at the same ``--models`` path), then run ``echomimic batch`` on the head with
``--backend ray --ray-address auto``. Ray is not a dependency: ``pip install "ray[default]"``.

This module is not exercised by the test suite (Ray is not installed there); only the missing-Ray message is.
"""
from __future__ import annotations

from ...errors import EchoMimicError


def import_ray():
    try:
        import ray
    except ImportError:
        raise EchoMimicError("--backend ray needs Ray, which is not installed: pip install \"ray[default]\" (on every "
                             "machine of the cluster), or leave out --backend to use the local worker processes.") from None
    return ray


def run_on_ray(todo: list, opts, on_event) -> None:
    ray = import_ray()
    from ray.util import ActorPool

    ray.init(address=opts.ray_address or None, ignore_reinit_error=True)
    gpus = int(ray.cluster_resources().get("GPU", 0))

    @ray.remote(max_restarts=opts.max_attempts - 1, max_task_retries=opts.max_attempts - 1)
    class Worker:
        def __init__(self, scores: bool, device: str):
            from ...devices import resolve_device
            from .render import ModelCache, Scorer

            self.device = str(resolve_device(device))  # "cuda": the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES)
            self.cache, self.scorer = ModelCache(), (Scorer() if scores else None)

        def render(self, job):
            from .render import run_job
            from .workers import error_message

            try:
                return job, {"status": "ok", **run_job(job, self.device, self.cache, self.scorer)}
            except Exception as exc:  # noqa: BLE001 - the row's error
                return job, {"status": "error", "error": error_message(exc)}

    device = "cpu" if not gpus or opts.device == "cpu" else "cuda"  # the caller's --device, on the cluster's GPUs
    n = opts.workers or (gpus if device == "cuda" else 1)
    options = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    pool = ActorPool([Worker.options(**options).remote(opts.scores, device) for _ in range(n)])
    ordered = sorted(todo, key=lambda j: (tuple(map(str, j.weight_key)), j.line))
    for job in ordered:
        job.attempts = 1
        on_event("start", None, job, None)
    for job, payload in pool.map_unordered(lambda actor, job: actor.render.remote(job), ordered):
        on_event("done", None, job, payload)
