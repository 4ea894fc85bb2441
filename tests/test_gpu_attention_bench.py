"""bench/gpu_attention.py on the CPU (tiny token counts): every shape of a denoiser call is timed, and the
per-call attention time is each shape's time by how often one call runs it."""
import json

import pytest

from tests._bench import load_bench


def test_gpu_attention_bench_runs_on_cpu_and_sums_each_call(capsys, monkeypatch):
    bench = load_bench("gpu_attention", monkeypatch)
    assert bench.main(["--device", "cpu", "--tiny", "--repeat", "1", "--kernels", "sdpa"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cases = out["cases"]
    assert set(cases) == {"v1 512 single", "v1 512 cfg", "v2 768 single"}
    # one 12-frame call: 16 transformer blocks (reference + audio attention each) and 21 motion modules (2 temporal each)
    single = cases["v1 512 single"]["shapes"]
    assert sum(s["times"] for s in single if "reference" in s["shape"]) == 16
    assert sum(s["times"] for s in single if "temporal" in s["shape"]) == 42
    assert len(cases["v1 512 cfg"]["shapes"]) == len(single) + 4  # the unconditional rows' plain self-attention
    for case in cases.values():
        total = sum(s["sdpa"]["ms"] * s["times"] for s in case["shapes"])
        assert case["attention_ms_per_call"]["sdpa"] == pytest.approx(total, abs=0.01)


def test_full_size_shapes_match_the_cost_model(monkeypatch):
    bench = load_bench("gpu_attention", monkeypatch)
    ref0 = next(s for s in bench.shapes(512, 12, False, False) if s["name"] == "L0 reference")
    assert (ref0["q"], ref0["k"], ref0["d"]) == (4096, 8192, 40)
    # the reference attention scores at 512 px: 8 N^2 C per block and frame (docs: 215 GFLOP per frame at level 0)
    assert bench.flops(ref0) * ref0["times"] / 12 == pytest.approx(5 * 8 * 4096**2 * 320, rel=1e-9)
