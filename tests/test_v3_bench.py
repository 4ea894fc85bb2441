"""A quick run of bench/bench_vram_v3.py (tiny networks, fake CUDA device): the stages and the JSON."""
from __future__ import annotations

import json

from tests._bench import load_bench


def test_bench_vram_v3_tiny(capsys, monkeypatch):
    bench = load_bench("bench_vram_v3", monkeypatch)
    assert bench.main(["--preset", "tiny", "--size", "64", "--frames", "9", "--device", "fake", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["stages"]) == {"vae_encode", "denoise", "decode"}
    assert res["peak_gb"] == max(res["stages"].values())
    assert res["stages"]["denoise"] * 1e9 > res["weights_gb"]["transformer"] * 1e9 * 0.99  # weights resident


def test_v3_memory_estimate_matches_the_bench_figures():
    """The constants reproduce the bench's full-size figures (768 px / 81 frames, 512 px / 81, 768 px / 41; bf16)."""
    import torch

    from echomimic_lib.models.wan import WanV3Config
    from echomimic_lib.pipeline.wan.memory import denoise_bytes, vae_bytes

    cfg = WanV3Config()
    for size, frames, measured_gb in ((768, 81, 6.434 - 3.728), (512, 81, 4.94 - 3.728), (768, 41, 5.148 - 3.728)):
        assert abs(denoise_bytes(cfg, frames, size, size, torch.bfloat16) / 1e9 - measured_gb) < 0.03 * measured_gb
    assert abs(vae_bytes(768, 768) / 1e9 - (6.543 - 0.254 - 0.0)) < 0.1
