"""Optional: the batch on a Ray cluster (``echomimic batch ... --backend ray [--ray-address HOST:PORT]``).

Why Ray: its actors are long-lived workers that keep state (our loaded models) and ask for a GPU each
(``num_gpus``), and it schedules them across machines. The output folder must be one every node can write at
the same path (a shared file system); ``results.jsonl`` is written by the driver only.

The driver hands out the jobs as :class:`.workers.LocalPool` does (one at a time to whichever actor is free,
the weight set it holds first) and keeps the same rules, so a row's record is the same on either backend:
an actor that dies (its process killed, its node lost) has its job put back and a fresh actor takes its place;
after ``max_attempts`` deaths the row is an error row. Ray's own ``max_restarts`` / ``max_task_retries`` are
left off on purpose: a retry Ray does silently would not count in ``attempts``, send no ``died`` event and
leave the dead attempt's ``.partial.mp4`` behind. An actor that cannot start at all (its ``__init__`` failed,
e.g. no usable GPU on its node) stops the batch: that is the cluster's setup, not a row's fault. The actors
report sampling progress as the local workers do, through a small Ray actor the driver drains while it waits
(:mod:`.ray_progress`): the same ``progress`` events reach the bar and ``on_event``; a lagging driver or a lost
progress actor drops events, never a row.

Start a cluster: ``ray start --head`` on one machine, ``ray start --address=HEAD:6379`` on the others (each with
this package and the weights at the same ``--models`` path), then run ``echomimic batch`` on the head with
``--backend ray --ray-address auto``. Without ``--ray-address`` the batch joins the cluster ``ray start`` began
on this machine, else starts a Ray instance of its own and stops it after. Ray is not a dependency:
``pip install "ray[default]"``. Tested on a local instance (``tests/test_batch_ray.py``, when Ray is
installed); without Ray only the missing-Ray message is.
"""
from __future__ import annotations

import itertools
import logging
import math
import os

from ...errors import EchoMimicError
from .ray_progress import ProgressSender, ProgressSink, drain

POLL_S = 0.5  # the driver drains the actors' progress this often while it waits for a job to finish


def import_ray():
    try:
        import ray
    except ImportError:
        raise EchoMimicError("--backend ray needs Ray, which is not installed: pip install \"ray[default]\" (on every "
                             "machine of the cluster), or leave out --backend to use the local worker processes.") from None
    return ray


class RayWorker:
    """One actor's state: the loop of :func:`.workers.worker_main` without the pipe. Defined here, not inside
    :func:`run_on_ray`, so that Ray ships it by reference (every node imports it from the installed package)."""

    def __init__(self, device: str, threads: int, scores: bool, log_level: int, cwd: str, wid: int = 0, sink=None):
        import torch

        from ...devices import resolve_device
        from .render import ModelCache, Scorer

        logging.basicConfig(level=log_level, format="%(message)s")  # Ray prefixes the actor's name and pid
        if os.path.isdir(cwd):  # relative manifest paths (inputs, OUTDIR) mean the same on every node
            os.chdir(cwd)
        torch.set_num_threads(threads)
        self.device = str(resolve_device(device))  # "cuda": the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES)
        self.cache, self.scorer = ModelCache(), (Scorer() if scores else None)
        self.progress = ProgressSender(import_ray(), sink, wid)

    def render(self, job) -> dict:
        from .workers import render_payload

        try:
            return render_payload(job, self.device, self.cache, self.scorer, self.progress.for_job(job))
        finally:
            self.progress.flush()  # its steps reach the sink before its result reaches the driver


class _Actor:
    """An actor as the events see a worker (``wid``, ``device``, like :class:`.workers._Worker`)."""

    def __init__(self, wid: int, device: str, handle):
        self.wid, self.device, self.handle, self.weight_key = wid, device, handle, None


def placement(resources: dict, opts, jobs: int) -> tuple[str, int, dict]:
    """(device, actor count, Ray resources per actor) for ``--device`` / ``--workers`` / ``--threads`` on a cluster
    with ``resources``. What the cluster cannot hold is refused up front: an actor that never fits would wait
    forever, and the job handed to it with it."""
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    if opts.device not in ("auto", "cpu") and not opts.device.startswith("cuda"):
        raise EchoMimicError(f"--device {opts.device}: use auto, cpu or cuda with --backend ray.")
    if opts.device.startswith("cuda") and not gpus:
        raise EchoMimicError(f"--device {opts.device}: the Ray cluster has no GPU; use --device cpu.")
    if opts.workers is not None and opts.workers < 1:
        raise EchoMimicError(f"--workers {opts.workers}: use 1 or more.")
    device = "cuda" if gpus and opts.device != "cpu" else "cpu"  # cuda:0,cuda:1 too: Ray assigns the GPUs
    threads = max(1, opts.threads or 1)
    n = min(opts.workers or (gpus if device == "cuda" else 1), max(1, jobs))
    need = {"num_cpus": threads}
    if device == "cuda":
        need["num_gpus"] = 1 / math.ceil(n / gpus)  # more workers than GPUs: they share them, as locally
    if n * threads > cpus:
        raise EchoMimicError(f"{n} worker(s) x {threads} thread(s) need {n * threads} CPUs; the Ray cluster has "
                             f"{cpus:g}. Use fewer --workers or --threads.")
    return device, n, need


def _cause(exc) -> str:
    """Ray's death message on one line, without its indented ids (class, actor id, namespace)."""
    return " ".join(line for line in str(exc).splitlines() if line.strip() and not line.startswith("\t"))


def run_on_ray(todo: list, opts, on_event) -> None:
    """Render ``todo`` on Ray actors with the events of :meth:`.workers.LocalPool.run`."""
    ray = import_ray()
    started = not ray.is_initialized()  # ours to shut down; an embedding program's own Ray is left as it was
    if started:
        try:
            ray.init(address=opts.ray_address or None)
        except (ConnectionError, ValueError) as exc:  # a ConnectionError alone would read as a file problem
            raise EchoMimicError(f"--ray-address {opts.ray_address or 'auto'}: cannot reach a Ray cluster ({exc}). Check the "
                                 "address (`ray status` on the head), or leave out --ray-address.") from None
    try:
        _run(ray, todo, opts, on_event)
    finally:
        if started:
            ray.shutdown()


def _run(ray, todo: list, opts, on_event) -> None:
    from .workers import LocalPool

    device, n, need = placement(ray.cluster_resources(), opts, len(todo))
    threads = need["num_cpus"]
    level = max(logging.getLogger("echomimic_lib").getEffectiveLevel(), logging.WARNING)
    remote = ray.remote(RayWorker).options(**need)
    live, wids = [], itertools.count()
    sink = sink_actor = _start_sink(ray)  # sink: None once it is lost

    def start() -> _Actor:
        wid = next(wids)
        live.append(_Actor(wid, device, remote.remote(device, threads, opts.scores, level, os.getcwd(), wid, sink)))
        return live[-1]

    idle = [start() for _ in range(n)]
    respawns_left = 2 * n  # as LocalPool: at most two fresh actors per worker in all
    pending = sorted(todo, key=lambda j: (tuple(map(str, j.weight_key)), j.line))
    busy = {}  # ObjectRef -> (actor, job)
    try:
        while pending or busy:
            while idle and pending:
                w = idle.pop(0)
                job = LocalPool._pick(pending, w)
                job.attempts += 1
                w.weight_key = job.weight_key
                busy[w.handle.render.remote(job)] = (w, job)
                on_event("start", w, job, None)
            if not busy:
                for job in pending:
                    on_event("done", None, job, {"status": "error", "error": "no worker left: every Ray actor died (see the log)."})
                return
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=POLL_S)
            sink = drain(ray, sink, busy, on_event)  # before a finished job's done: its last steps first
            if not ready:
                continue
            ref = ready[0]
            w, job = busy.pop(ref)
            try:
                payload = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                if exc.actor_init_failed:
                    raise EchoMimicError(f"a Ray actor could not start ({device}): {str(exc).strip().splitlines()[-1]}") from None
                live.remove(w)
                ray.kill(w.handle)  # dead, or only unreachable for now: either way not to be used again
                why = f"Ray actor {w.wid} ({device}) died while rendering it"
                on_event("died", w, job, f"{why} ({_cause(exc)})")
                if job.attempts >= opts.max_attempts:
                    on_event("done", w, job, {"status": "error", "error": f"{why}, {job.attempts} time(s); giving up on this row."})
                else:
                    pending.insert(0, job)
                if respawns_left > 0:
                    respawns_left -= 1
                    idle.append(start())
                continue
            idle.append(w)
            on_event("done", w, job, payload)
    finally:
        for w in live:  # at once: interrupted, the rows in flight stop (the driver removes what they left)
            ray.kill(w.handle)
        ray.kill(sink_actor)


def _start_sink(ray):
    """The progress actor, on this (the driver's) node when it can be, taking no CPU."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(ProgressSink).options(num_cpus=0, scheduling_strategy=here).remote()
