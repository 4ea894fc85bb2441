"""A quick run of bench/bench_vram_v3.py (tiny networks, fake CUDA device): the stages and the JSON."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_vram_v3_tiny(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_vram_v3", ROOT / "bench" / "bench_vram_v3.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec.loader.exec_module(bench)
    assert bench.main(["--preset", "tiny", "--size", "64", "--frames", "9", "--device", "fake", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res["stages"]) == {"vae_encode", "denoise", "decode"}
    assert res["peak_gb"] == max(res["stages"].values())
    assert res["stages"]["denoise"] * 1e9 > res["weights_gb"]["transformer"] * 1e9 * 0.99  # weights resident
