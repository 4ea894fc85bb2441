"""Rows recorded before ``stabilize`` and ``resumable`` existed stay done: neither is hashed at its default, and
``resumable`` (how a row is rendered, not what) never is; a ``stabilize`` level is."""
import dataclasses
import hashlib
import json

from echomimic_lib.jobs.animate import AnimateRequest
from echomimic_lib.jobs.batch.manifest_row import Job
from echomimic_lib.jobs.batch.results import content_digest, fingerprint


def _old_way(job) -> str:
    """The fingerprint as computed before the two fields (the request without them)."""
    settings = dataclasses.asdict(job.request)
    for key in ("output", "device", "reference", "audio", "landmarks", "pose", "lora", "stabilize", "resumable",
                "compile", "cuda_graphs", "deep_cache", "deep_cache_branch"):
        settings.pop(key, None)
    inputs = {k: content_digest(getattr(job.request, k)) for k in ("reference", "audio", "pose")}
    doc = {"kind": "animate", "settings": settings, "inputs": inputs, "weights": [str(k) for k in job.weight_key]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def test_rows_recorded_before_keep_their_fingerprint(tmp_path):
    (tmp_path / "r.png").write_bytes(b"png")
    (tmp_path / "a.wav").write_bytes(b"wav")
    req = AnimateRequest(reference=str(tmp_path / "r.png"), audio=str(tmp_path / "a.wav"), output=str(tmp_path / "o.mp4"),
                         mode="v2-halfbody", pose="p")
    job = Job(1, "r", "animate", req)
    job.weight_key = ("m", "v2", "normal")
    assert fingerprint(job) == _old_way(job)
    job.request = dataclasses.replace(req, resumable=True)
    assert fingerprint(job) == _old_way(job)  # resumable: how, not what
    job.request = dataclasses.replace(req, stabilize="strong")
    assert fingerprint(job) != _old_way(job)  # a level changes the frames: the row renders again
