"""The torch device of a Ray actor (:func:`echomimic_lib.jobs.batch.ray_backend.actor_device`): made from the GPU
ids Ray gave it and what torch sees there, never named by the driver; runs without Ray and without a GPU. Also
``--device cuda:N`` / ``cuda:0,cuda:1`` with ``--backend ray``, refused before anything is read or started."""
from types import SimpleNamespace

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.batch import ray_backend
from echomimic_lib.jobs.batch.ray_backend import actor_device
from tests.test_batch import _good_rows, _manifest, media  # noqa: F401


def test_a_gpu_actor_runs_on_the_gpu_ray_made_visible():
    # Ray sets CUDA_VISIBLE_DEVICES to the id it gave: that GPU is torch's first, whatever its number on the node
    assert actor_device("gpu", [0], 1, {"CUDA_VISIBLE_DEVICES": "0"}) == "cuda:0"
    assert actor_device("gpu", ["3"], 1, {"CUDA_VISIBLE_DEVICES": "3"}) == "cuda:0"
    assert actor_device("gpu", ["GPU-5d1f"], 1, {"CUDA_VISIBLE_DEVICES": "GPU-5d1f"}) == "cuda:0"  # ids as UUIDs
    # Ray told not to set it (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): torch sees the node's GPUs
    assert actor_device("gpu", [2], 4, {}) == "cuda:2"
    assert actor_device("gpu", ["6"], 2, {"CUDA_VISIBLE_DEVICES": "4,6"}) == "cuda:1"  # its place in the inherited list


def test_actors_sharing_one_gpu_each_get_it():
    # fractional num_gpus (more --workers than GPUs): Ray gives each actor the id of the GPU they share
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    assert [actor_device("gpu", ["1"], 1, env) for _ in range(3)] == ["cuda:0"] * 3
    assert actor_device("gpu", [1], 4, {}) == "cuda:1"


def test_a_cpu_actor_runs_on_the_cpu():
    assert actor_device("cpu", [], 0, {}) == "cpu"
    assert actor_device("cpu", [], 2, {"CUDA_VISIBLE_DEVICES": ""}) == "cpu"  # GPUs on the node are not its own


def test_a_gpu_torch_cannot_see_is_a_clear_error():
    env = {"CUDA_VISIBLE_DEVICES": "1"}
    with pytest.raises(EchoMimicError) as err:
        actor_device("gpu", [1], 0, env, "PyTorch 2.14.0+cpu, built without CUDA")
    text = str(err.value)
    assert "Ray gave this actor GPU id(s) ['1'] (CUDA_VISIBLE_DEVICES '1') but PyTorch sees no CUDA device" in text
    assert "(PyTorch 2.14.0+cpu, built without CUDA)" in text and "CPU-only PyTorch on this node" in text
    assert "driver problem" in text and "Install a CUDA build of PyTorch" in text and "--device cpu" in text
    with pytest.raises(EchoMimicError, match=r"GPU id\(s\) \['0'\] \(CUDA_VISIBLE_DEVICES not set\) but PyTorch sees no"):
        actor_device("gpu", [0], 0, {})
    with pytest.raises(EchoMimicError, match=r"which is CUDA device 3, but PyTorch sees 2 CUDA device\(s\)"):
        actor_device("gpu", [3], 2, {})
    with pytest.raises(EchoMimicError, match=r"asked for a GPU but Ray gave it none .ray.get_gpu_ids\(\) is empty"):
        actor_device("gpu", [], 1, {})


class _FakeRay:
    def __init__(self, ids):
        self.ids, self.util = ids, SimpleNamespace(get_node_ip_address=lambda: "10.0.0.7")

    def get_gpu_ids(self):
        return self.ids


def test_the_actor_takes_its_device_from_ray_and_reports_it(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(ray_backend, "import_ray", lambda: _FakeRay([1]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.chdir(tmp_path)  # the actor moves to the driver's folder: back here after the test
    actor = ray_backend.RayWorker("gpu", 1, False, 30, str(tmp_path))
    assert actor.where() == {"device": "cuda:0", "gpu_ids": ["1"], "node": "10.0.0.7"}
    seen = ray_backend._Actor(0, "gpu", None)
    assert seen.device is None and seen.label == "gpu, not started"
    seen.started(actor.where())
    assert (seen.device, seen.gpu_ids, seen.label) == ("cuda:0", ["1"], "cuda:0, Ray GPU 1 on 10.0.0.7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # a CPU-only torch on a node Ray counts GPUs on
    with pytest.raises(EchoMimicError, match=r"^on node 10\.0\.0\.7: Ray gave this actor GPU id\(s\) \['1'\] .* but PyTorch sees no CUDA"):
        ray_backend.RayWorker("gpu", 1, False, 30, str(tmp_path))
    cpu = ray_backend.RayWorker("cpu", 1, False, 30, str(tmp_path))  # asks Ray for no GPU, looks for none
    assert cpu.where() == {"device": "cpu", "gpu_ids": [], "node": "10.0.0.7"}


@pytest.mark.parametrize("device", ["cuda:1", "cuda:0,cuda:1"])
def test_gpu_numbers_with_ray_are_refused_up_front(media, tmp_path, capsys, device):  # noqa: F811
    m = _manifest(media / "ray_device.csv", _good_rows(1))
    out = tmp_path / "out"
    code = cli(["batch", str(m), "-o", str(out), "--backend", "ray", "--device", device, "--models", str(media / "models")])
    err = capsys.readouterr().err
    assert code == 2 and f"--device {device}: with --backend ray, Ray assigns the GPUs" in err
    assert "use --device cuda (or auto)" in err and "ray start --num-gpus" in err and "CUDA_VISIBLE_DEVICES" in err
    assert not out.exists()  # before the output folder, the rows' checks or Ray
    for ok in ("auto", "cpu", "cuda"):
        ray_backend.check_device(ok)
