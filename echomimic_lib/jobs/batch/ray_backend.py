"""Optional: the batch on a Ray cluster (``echomimic batch ... --backend ray [--ray-address HOST:PORT]``).

Why Ray: its actors are long-lived workers that keep state (our loaded models) and ask for a GPU each
(``num_gpus``), and it schedules them across machines. The output folder must be one every node can write at
the same path (a shared file system); ``results.jsonl`` is written by the driver only.

The driver hands out the jobs as :class:`.workers.LocalPool` does (one at a time to whichever actor is free,
the weight set it holds first) and keeps the same rules, so a row's record is the same on either backend:
an actor that dies (its process killed, its node lost) has its job put back and a fresh actor takes its place;
after ``max_attempts`` deaths the row is an error row, and a weight set whose rows keep killing actors fails its own
rows only (:class:`.crash_rule.CrashRule`, the local pool's rule too). ``--row-timeout`` is local only. Ray's own ``max_restarts`` / ``max_task_retries`` are
left off on purpose: a retry Ray does silently would not count in ``attempts``, send no ``died`` event and
leave the dead attempt's ``.partial.mp4`` behind. An actor that cannot start at all (its ``__init__`` failed,
e.g. torch sees no GPU where Ray gave one) stops the batch: that is the cluster's setup, not a row's fault. The actors
report sampling progress as the local workers do, through a small Ray actor the driver drains while it waits
(:mod:`.ray_progress`): the same ``progress`` events reach the bar and ``on_event``; a lagging driver or a lost
progress actor drops events, never a row.

Devices: the driver decides Ray resources only (:func:`placement`: GPU or CPU actors, how many, ``num_gpus`` and
``num_cpus`` each; more actors than GPUs share them with a fractional ``num_gpus``). Which GPU an actor runs on is
Ray's choice: inside the actor, ``ray.get_gpu_ids()`` and the CUDA_VISIBLE_DEVICES Ray set make its torch device
(:func:`actor_device`, normally ``cuda:0``), checked against what torch sees there; the actor reports it (with
the Ray GPU id and its node) before the driver hands it a job, and that is the ``device`` the events and the
records show. ``--device`` is ``auto``, ``cpu`` or ``cuda``; a list of this machine's GPUs (``cuda:1``,
``cuda:0,cuda:1``) is refused: to keep Ray off a node's GPUs, start Ray there with ``--num-gpus`` or
CUDA_VISIBLE_DEVICES.

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

log = logging.getLogger(__name__)

POLL_S = 0.5  # the driver drains the actors' progress this often while it waits for a job to finish


def import_ray():
    try:
        import ray
    except ImportError:
        raise EchoMimicError("--backend ray needs Ray, which is not installed: pip install \"ray[default]\" (on every "
                             "machine of the cluster), or leave out --backend to use the local worker processes.") from None
    return ray


def check_device(device: str) -> None:
    """``--device`` with ``--backend ray``: Ray, not the command line, decides which GPU an actor gets."""
    if device in ("auto", "cpu", "cuda"):
        return
    if device.startswith("cuda"):  # cuda:1, cuda:0,cuda:1: a list of this machine's GPUs, meaningless on a cluster
        raise EchoMimicError(f"--device {device}: with --backend ray, Ray assigns the GPUs; use --device cuda (or "
                             "auto). To keep Ray off some GPUs of a node, start Ray there with `ray start --num-gpus N` "
                             "or with CUDA_VISIBLE_DEVICES set.")
    raise EchoMimicError(f"--device {device}: use auto, cpu or cuda with --backend ray.")


def actor_device(kind: str, gpu_ids, cuda_count: int, env, build: str = "") -> str:
    """The torch device of an actor that asked Ray for ``kind`` ("gpu" | "cpu") and was given ``gpu_ids``
    (``ray.get_gpu_ids()``), where torch sees ``cuda_count`` CUDA devices and the environment is ``env``.

    Ray sets CUDA_VISIBLE_DEVICES to the ids it gave, so the actor's GPU is torch's ``cuda:<its place in that
    list>``: ``cuda:0``, also when several actors share one GPU (fractional ``num_gpus``: each is given its id).
    With CUDA_VISIBLE_DEVICES not set (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES) torch sees the node's GPUs
    and the id is torch's index. ``build``: how torch was built, for the message when it sees no GPU."""
    if kind == "cpu":
        return "cpu"
    ids = [str(i) for i in gpu_ids]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    shown = "not set" if visible is None else repr(visible)
    if not ids:
        raise EchoMimicError("this Ray actor asked for a GPU but Ray gave it none (ray.get_gpu_ids() is empty; "
                             f"CUDA_VISIBLE_DEVICES {shown}); check `ray status`, or run the batch with --device cpu.")
    if cuda_count < 1:
        raise EchoMimicError(f"Ray gave this actor GPU id(s) {ids} (CUDA_VISIBLE_DEVICES {shown}) but PyTorch sees no "
                             f"CUDA device{f' ({build})' if build else ''}: a CPU-only PyTorch on this node, or a driver "
                             "problem (check nvidia-smi there). Install a CUDA build of PyTorch on that node, or start "
                             "Ray there with `ray start --num-gpus 0`, or run the batch with --device cpu.")
    if visible is None:
        index = min(int(i) if i.isdigit() else 0 for i in ids)
    else:
        listed = [v.strip() for v in visible.split(",")]
        index = min((listed.index(i) for i in ids if i in listed), default=0)
    if index >= cuda_count:
        raise EchoMimicError(f"Ray gave this actor GPU id(s) {ids} (CUDA_VISIBLE_DEVICES {shown}), which is CUDA device "
                             f"{index}, but PyTorch sees {cuda_count} CUDA device(s) on this node; restart Ray there "
                             "with the GPUs it may use (`ray start --num-gpus N`, or CUDA_VISIBLE_DEVICES set).")
    return f"cuda:{index}"


def _torch_build(torch) -> str:
    return f"PyTorch {torch.__version__}, " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA")


class RayWorker:
    """One actor's state: the loop of :func:`.workers.worker_main` without the pipe. Defined here, not inside
    :func:`run_on_ray`, so that Ray ships it by reference (every node imports it from the installed package).
    ``kind``: what it asked Ray for ("gpu" | "cpu"); its torch device follows from what Ray gave it
    (:func:`actor_device`), and :meth:`where` tells the driver."""

    def __init__(self, kind: str, threads: int, scores: bool, log_level: int, cwd: str, wid: int = 0, sink=None):
        import torch

        from .render import ModelCache, Scorer

        logging.basicConfig(level=log_level, format="%(message)s")  # Ray prefixes the actor's name and pid
        if os.path.isdir(cwd):  # relative manifest paths (inputs, OUTDIR) mean the same on every node
            os.chdir(cwd)
        ray = import_ray()
        ids, self.node = (ray.get_gpu_ids() if kind == "gpu" else []), ray.util.get_node_ip_address()
        try:
            self.device = actor_device(kind, ids, torch.cuda.device_count() if ids else 0, os.environ, _torch_build(torch))
        except EchoMimicError as exc:
            raise EchoMimicError(f"on node {self.node}: {exc}") from None
        self.gpu_ids = [str(i) for i in ids]
        torch.set_num_threads(threads)
        self.cache, self.scorer = ModelCache(), (Scorer() if scores else None)
        self.progress = ProgressSender(ray, sink, wid)

    def where(self) -> dict:
        """Its torch device, Ray's GPU id(s) behind it and its node, for the driver's events and messages."""
        return {"device": self.device, "gpu_ids": self.gpu_ids, "node": self.node}

    def render(self, job) -> dict:
        from .workers import render_payload

        try:
            return render_payload(job, self.device, self.cache, self.scorer, self.progress.for_job(job))
        finally:
            self.progress.flush()  # its steps reach the sink before its result reaches the driver


class _Actor:
    """An actor as the events see a worker (``wid``, ``device``, like :class:`.workers._Worker`): ``device`` is
    the one the actor reports once it has started (``cuda:0``, ``cpu``), with Ray's ``gpu_ids`` and its ``node``;
    the driver hands it a job only then."""

    def __init__(self, wid: int, kind: str, handle):
        self.wid, self.kind, self.handle, self.weight_key = wid, kind, handle, None
        self.device, self.gpu_ids, self.node = None, [], None

    def started(self, where: dict) -> None:
        self.device, self.gpu_ids, self.node = where["device"], list(where["gpu_ids"]), where["node"]

    @property
    def label(self) -> str:
        if self.device is None:
            return f"{self.kind}, not started"
        gpu = f", Ray GPU {','.join(self.gpu_ids)}" if self.gpu_ids else ""
        return f"{self.device}{gpu} on {self.node}"


def placement(resources: dict, opts, jobs: int) -> tuple[str, int, dict]:
    """(kind, actor count, Ray resources per actor) for ``--device`` / ``--workers`` / ``--threads`` on a cluster
    with ``resources``: ``kind`` "gpu" (each actor asks for ``num_gpus``) or "cpu". Which GPU, and so which torch
    device, is Ray's choice, made known inside the actor (:func:`actor_device`). What the cluster cannot hold is
    refused up front: an actor that never fits would wait forever."""
    check_device(opts.device)
    gpus, cpus = int(resources.get("GPU", 0)), resources.get("CPU", 0)
    if opts.device == "cuda" and not gpus:
        raise EchoMimicError(f"--device {opts.device}: the Ray cluster has no GPU; use --device cpu.")
    if opts.workers is not None and opts.workers < 1:
        raise EchoMimicError(f"--workers {opts.workers}: use 1 or more.")
    kind = "gpu" if gpus and opts.device != "cpu" else "cpu"
    threads = max(1, opts.threads or 1)
    n = min(opts.workers or (gpus if kind == "gpu" else 1), max(1, jobs))
    need = {"num_cpus": threads}
    if kind == "gpu":
        need["num_gpus"] = 1 / math.ceil(n / gpus)  # more workers than GPUs: they share them, as locally
    if n * threads > cpus:
        raise EchoMimicError(f"{n} worker(s) x {threads} thread(s) need {n * threads} CPUs; the Ray cluster has "
                             f"{cpus:g}. Use fewer --workers or --threads.")
    return kind, n, need


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
    from .crash_rule import CrashRule
    from .workers import pick_job

    kind, n, need = placement(ray.cluster_resources(), opts, len(todo))
    threads = need["num_cpus"]
    level = max(logging.getLogger("echomimic_lib").getEffectiveLevel(), logging.WARNING)
    remote = ray.remote(RayWorker).options(**need)
    live, wids = [], itertools.count()
    sink = sink_actor = _start_sink(ray)  # sink: None once it is lost
    starting = {}  # ObjectRef of where() -> actor: jobs go to an actor once it says which device it has

    def start() -> None:
        wid = next(wids)
        w = _Actor(wid, kind, remote.remote(kind, threads, opts.scores, level, os.getcwd(), wid, sink))
        live.append(w)
        starting[w.handle.where.remote()] = w

    def lost(w: _Actor) -> None:
        live.remove(w)
        ray.kill(w.handle)  # dead, or only unreachable for now: either way not to be used again
        if rule.take_respawn():
            start()

    rule = CrashRule(n, opts.max_attempts)  # as LocalPool: retries, a weight set that crashes its actors, respawns
    for _ in range(n):
        start()
    idle = []
    pending = sorted(todo, key=lambda j: (tuple(map(str, j.weight_key)), j.line))
    busy = {}  # ObjectRef -> (actor, job)
    try:
        while pending or busy:
            while idle and pending:
                w = idle.pop(0)
                job = pick_job(pending, w.weight_key, [a.weight_key for a in live if a is not w])
                job.attempts += 1
                w.weight_key = job.weight_key
                busy[w.handle.render.remote(job)] = (w, job)
                on_event("start", w, job, None)
            if not busy and not starting:
                for job in pending:
                    on_event("done", None, job, {"status": "error", "error": "no worker left: every Ray actor died (see the log)."})
                return
            ready, _ = ray.wait(list(busy) + list(starting), num_returns=1, timeout=POLL_S)
            sink = drain(ray, sink, busy, on_event)  # before a finished job's done: its last steps first
            if not ready:
                continue
            ref = ready[0]
            if ref in starting:
                w = starting.pop(ref)
                try:
                    w.started(ray.get(ref))
                except ray.exceptions.RayActorError as exc:
                    if exc.actor_init_failed:
                        why = str(exc).strip().splitlines()[-1].removeprefix(f"{EchoMimicError.__module__}.EchoMimicError: ")
                        raise EchoMimicError(f"a Ray actor ({w.kind}) could not start: {why}") from None
                    log.warning("Ray actor %d (%s) died before its first job (%s)", w.wid, w.label, _cause(exc))
                    lost(w)
                    continue
                log.info("Ray actor %d: %s", w.wid, w.label)
                idle.append(w)
                continue
            w, job = busy.pop(ref)
            try:
                payload = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                why = f"Ray actor {w.wid} ({w.label}) died while rendering it"
                ended = rule.died(job, why, pending)  # (decides job.retrying before the death is reported)
                lost(w)  # killed before its partial video is removed
                on_event("died", w, job, f"{why} ({_cause(exc)})")
                for k, (each, end) in enumerate(ended):
                    on_event("done", w if k == 0 else None, each, end)  # (a crashing set's other rows never started)
                continue
            idle.append(w)
            if isinstance(payload, dict) and payload.get("status") == "ok":
                rule.finished_one(job)
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
