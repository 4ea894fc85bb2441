"""The GPU check (``bench/gpu_check.sh``, issue 23) is never what fails on the GPU: its ``--dry-run`` runs every
step here on the CPU with tiny weights (the CUDA tests collect and skip, the suite, the VRAM goals on the fake
device, two ``echomimic animate`` runs through the weight writer), and each step's record comes back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._bench import load_bench

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in of the GPU run")
def test_gpu_check_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("ECHOMIMIC_GPU_REPORT", None)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=1500)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    logs = {p.name: p.read_text()[-3000:] for p in out.glob("*.log")}
    assert [s["step"] for s in steps] == ["tests", "attention", "suite", "vram", "animate", "v3", "deepcache", "v3fp8"], proc.stdout
    assert all(s["rc"] == 0 for s in steps), (steps, logs)
    assert proc.returncode == 0
    assert "skipped" in logs["tests.log"] and "failed" not in logs["tests.log"]  # CUDA tests skip cleanly here
    attention = json.loads((out / "attention.log").read_text().strip().splitlines()[-1])
    assert all(c["attention_ms_per_call"]["sdpa"] > 0 for c in attention["cases"].values())
    # the result line (the profiler's own log lines, on stderr, may come after it)
    lines = (out / "suite.log").read_text().splitlines()
    suite = json.loads(next(line for line in reversed(lines) if line.startswith('{"device"')))
    assert suite["plan"] == ["v1:off+prof", "v1:off+graphs", "v1:off+cl+cudnn"]
    for variant in ("off+prof", "off+cl+cudnn"):
        res = suite["v1"][f"compile_{variant}"]
        assert all(res[f"acc_e2e_wpb{w}"]["frames_per_s"] > 0 for w in (1, 4)) and "error" not in res, res
        assert set(res["compile_s_per_shape"]) == {"single", "single_x4", "cfg"}
        assert res["compile_s_max_per_shape"] == max(res["compile_s_per_shape"].values())
        assert res["vae_decode_s_per_frame"] > 0 and res["vae_decode_cl_s_per_frame"] > 0  # NCHW and channels-last
    for shape in ("single", "single_x4", "cfg"):  # the kernel share of each call shape (CPU operators here)
        prof = suite["v1"]["compile_off+prof"][f"{shape}_profile"]
        assert 0 < prof["busy_s_per_call"] <= prof["wall_s_per_call"] and abs(sum(prof["share"].values()) - 1) < 0.01
    assert suite["v1"]["compile_off+graphs"] == "skipped (needs CUDA: CUDA graphs)"
    partial = [json.loads(line)["partial"]["v1"] for line in lines if line.startswith('{"partial"')]
    assert {k for p in partial for k in p} == {"setup", "compile_off+prof", "compile_off+cl+cudnn"}  # figures as they come
    vram = json.loads(logs["vram.log"].strip().splitlines()[-1])
    assert len(vram["goals"]) == 5 and all(isinstance(r["peak_gb"], (float, list)) for r in vram["goals"])
    anim = logs["animate.log"]
    assert anim.count("stage seconds: checks_and_condition") == 2 and "v1.mp4" in anim and "v2.mp4" in anim
    assert "Traceback" not in anim
    check_v3_log((out / "v3.log").read_text())
    fp8 = json.loads((out / "v3fp8.log").read_text().strip().splitlines()[-1])
    assert fp8["fp8"] and fp8["fp8_saved_gb"] >= 0 and fp8["compiled"]["call_s"] > 0 and fp8["sample_8_steps"]["finite"]
    assert fp8["vae_decode"] == fp8["vae_encode"] == "not asked for (--stages)"


def check_v3_log(text: str) -> None:
    """The v3 step's log: gpu_v3's partial lines and result line, then bench_vram_v3's JSON line (tiny, CPU)."""
    import math

    lines = text.splitlines()
    res = json.loads(next(line for line in lines if line.startswith('{"device"')))
    assert "Traceback" not in text and res["tiny"] and res["peak_vram_gb"] == {}  # no CUDA memory figure on the CPU
    assert res["shape"]["context_tokens"] == 512 + 257 and res["flops_TF_per_call"]["total"] > 0
    for key in ("eager", "compiled"):
        r = res[key]
        assert all(math.isfinite(x) and x > 0 for x in [r["call_s"], r["first_call_s"], *r["calls_s"]]), r
        assert r["mfu"] is None and r["tflops_per_s"] > 0  # no peak for a CPU
        shot = res[f"shot_{key}"]
        assert 0 < shot["teacache_official_s_per_frame"] <= shot["teacache_off_s_per_frame"]
        assert shot["includes"] == ["calls", "vae_decode_s", "vae_encode_s"]
    assert res["compiled"]["compile_s"] >= 0 and res["vae_decode_s"] > 0 and res["vae_encode_s"] > 0
    lo, hi = res["teacache_calls_bounds"]
    sample = res["sample_8_steps"]
    assert sample["calls"] == 16 and lo <= sample["computed_calls"] <= hi and sample["finite"] and sample["seconds"] > 0
    assert sample["computed_calls"] == res["teacache_calls"]
    partial = [json.loads(line)["partial"] for line in lines if line.startswith('{"partial"')]
    assert len(partial) == 6 and "eager" in partial[1] and "compiled" not in partial[1]  # setup, then one per stage
    plain, small = (json.loads(line) for line in lines if line.startswith('{"size"'))  # the default, then --fp8 --vae-tiling
    for vram in (plain, small):
        assert vram["preset"] == "tiny" and vram["device"] == "fake" and vram["peak_gb"] > 0
    assert not plain["fp8"] and small["fp8"] and small["vae_tiling"]


def test_gpu_suite_variants_are_a_base_and_modifiers_checked_before_any_work(monkeypatch):
    suite = load_bench("gpu_suite", monkeypatch)
    v = suite.parse_variant("on+graphs+cl+cudnn")
    assert (v.compile, v.graphs, v.channels_last, v.cudnn, v.vae, v.region_graphs) == (True, True, True, True, False, False)
    assert v.needs_cuda and not suite.parse_variant("off+cl+vae").needs_cuda
    old = suite.parse_variant("on+cuda-graphs")  # the per-region graphs of the first H200 run, under their new name
    assert old.region_graphs and not old.graphs and old.needs_cuda
    for bad, why in [("of", "off or on"), ("on+graph", "modifiers are"), ("on+cl+cl", "each once"),
                     ("off+region-graphs", "needs on"), ("on+graphs+region-graphs", "excludes graphs"),
                     ("off+attn-flash+attn-cudnn", "one attention kernel")]:
        with pytest.raises(ValueError, match=why):
            suite.parse_variant(bad)
    k = suite.parse_variant("off+attn-cudnn+vae-cl")
    assert (k.attention, k.vae_cl, k.vae, k.compile) == ("sdpa-cudnn", True, False, False)
    plan = suite.parse_plan("v1:off+graphs,v2:on", ["v1"], False, False)
    assert [(ver, var.name) for ver, var in plan] == [("v1", "off+graphs"), ("v2", "on")]
    assert [f"{ver}:{var.name}" for ver, var in suite.parse_plan(None, ["v1", "v2"], True, True)] == \
        ["v1:off", "v2:off", "v1:off+graphs", "v2:off+graphs"]
    with pytest.raises(ValueError, match="v1 or v2"):
        suite.parse_plan("v3:on", ["v1"], False, False)


def test_gpu_suite_graph_variant_runs_every_measurement_through_the_cpu_stand_in(monkeypatch):
    """The suite's graphs path (its own runner for the call timings, ``cuda_graphs=True`` in the generations) on
    tiny weights, with the strict recording stand-in of tests/test_cuda_graphs.py in place of the GPU's graphs."""
    import argparse

    from echomimic_lib.models.unet import graphs
    from echomimic_lib.pipeline import Sampler, sampler
    from tests.test_cuda_graphs import StrictGraph

    suite = load_bench("gpu_suite", monkeypatch)
    runners = []

    class StandIn(graphs.CudaGraphRunner):
        def __init__(self, den):
            super().__init__(den, graph_factory=StrictGraph)
            runners.append(self)

    for module in (graphs, sampler):
        monkeypatch.setattr(module, "CudaGraphRunner", StandIn)
    monkeypatch.setattr(Sampler, "_check_cuda_graphs", lambda self, device: None)
    suite._register_cpu_sdpa()
    args = argparse.Namespace(tiny=True, e2e_frames=12, frames=12, repeat=1, compile_backend="inductor")
    st = suite.setup_version("v1", args, torch.device("cpu"), torch.float32)
    res, emitted = {}, []
    suite.measure(st, suite.parse_variant("off+graphs+prof"), args, None, res, lambda: emitted.append(dict(res)))
    assert "error" not in res and len(emitted) == 7  # one partial record per measurement, the profile last
    for shape in ("single", "single_x4", "cfg"):  # replayed (no CUDA timeline here: operators) and eager
        assert [p for p in ("profile", "profile_eager") if "error" in res[f"{shape}_{p}"]] == [], res[f"{shape}_profile"]
    assert set(res["compile_s_per_shape"]) == {"single", "single_x4", "cfg"}
    assert all(res[f"{k}_graph_max_abs_vs_eager"] < 1e-4 for k in ("single", "single_x4", "cfg")), res
    assert res["graphs"] == {"captures": 3, "replays": 3 * (1 + 1 + 1), "failed": None}  # capture call + repeat + check
    assert all(res[f"acc_e2e_wpb{w}"]["frames_per_s"] > 0 for w in (1, 4)) and res["short_generation"]["seconds"] > 0
    # the suite's runner, then one per generation (two per acc clip: warm-up and timed; the short generation)
    assert len(runners) == 1 + 4 + 1 and all(r.failed is None and r.captures == 1 for r in runners[1:])
    assert runners[0]._recorded == {}  # released when the variant ended


def test_gpu_weights_writes_a_folder_the_command_line_loads(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_weights
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from echomimic_lib.model_set import load_models
    from echomimic_lib.tiny import is_tiny_folder

    gpu_weights.write(tmp_path, tiny=True, device="cpu", dtype=torch.float32)
    assert not is_tiny_folder(tmp_path)  # treated like downloaded weights
    for weights in ("v1_audio", "v2"):
        models = load_models(tmp_path, weights, "normal")
        assert models.vae is not None and models.audio_encoder is not None
    assert not any(tmp_path.rglob("*_acc*"))  # the normal variant only


def test_the_command_line_places_each_network_for_its_stage_on_a_gpu_only(tmp_path, tmp_path_factory):
    """Measured on an H200: with every network resident, V1 512 px fp16 peaked at 8.8 GB (goal 6). On a GPU the
    command line now uses the nodes' stage-by-stage placement; the CPU path is unchanged."""
    from dataclasses import replace

    from echomimic_lib.jobs.animate import AnimateRequest, _memory_options, _staged
    from echomimic_lib.memory import Placement
    from echomimic_lib.model_set import load_models
    from echomimic_lib.pipeline import settings_for
    from tests._tiny_shared import tiny_v1_copy

    models = load_models(tiny_v1_copy(tmp_path_factory, tmp_path / "v1"), "v1_audio", "normal")
    req = AnimateRequest(reference="r.png", audio="a.wav", output="o.mp4")
    settings = settings_for("v1-audio", "normal", width=64, height=64)
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert _staged(req, gpu) and not _staged(req, cpu) and not _staged(replace(req, low_vram=True), gpu)
    place = _memory_options(req, models, gpu, settings)
    assert isinstance(place, Placement) and place.streamer is None and not place.keep_loaded and place.device == gpu
    assert _memory_options(req, models, cpu, settings) is None  # everything stays where it is


def test_vram_goals_set_each_measured_run_beside_its_computed_figure(monkeypatch, capsys):
    bench = load_bench("bench_vram", monkeypatch)
    computed = json.loads((ROOT / "bench" / "vram_computed.json").read_text())["runs"]

    def measured(extra):  # a GPU that reads 10 % above the computation, except V2 low-VRAM at 30 %
        low = "--lowvram" in extra
        key = "V2 768 px fp16 low-VRAM" if low else f"{extra[0]} {extra[extra.index('--size') + 1]}: {extra[extra.index('--frames') + 1]}"
        base = computed[key]["peak_gb"]
        return {"peak_gb": round(base * (1.3 if low else 1.1), 3), "stages": {"denoise": base}, "device": "gpu"}

    monkeypatch.setattr(bench, "_child", measured)
    assert bench.main(["--goals", "--device", "cuda", "--computed", str(ROOT / "bench" / "vram_computed.json"), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["goals"]
    beside = {r["goal"]: r for r in rows if r["goal"].startswith("measured vs computed")}
    assert len(beside) == 7 and all(r["peak_gb"][1] == computed[r["goal"].split(": ", 1)[1]]["peak_gb"] for r in beside.values())
    assert [r["ok"] for r in beside.values()].count(False) == 1  # only the 30 % row is outside 15 %
    assert not beside["measured vs computed: V2 768 px fp16 low-VRAM"]["ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the CPU stand-in of the GPU run")
def test_gpu_check_runs_only_the_steps_asked_for(tmp_path):
    """The GPU run is two device commands (one may last 10 minutes at most): GPU_STEPS picks each one's steps."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_STEPS="attention")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == ["attention"] and steps[0]["rc"] == 0 and proc.returncode == 0, proc.stdout
    assert sorted(p.name for p in out.glob("*.log")) == ["attention.log"]


def test_kernel_share_sorts_real_kernel_names_into_kinds_and_counts_overlaps_once(monkeypatch):
    ks = load_bench("_kernel_share", monkeypatch)
    names = {  # kernel names as CUDA profiles of SD-style UNets on Hopper print them
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "conv",
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1": "gemm",
        "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NTN": "gemm",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>": "attention",
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x64x64_4x1x1_kernel0_0": "attention",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::Half, float>": "norm",
        "triton_per_fused_add_native_group_norm_silu_0": "norm",
        "triton_poi_fused_add_mul_3": "fused (triton)",
        "void at::native::elementwise_kernel<128, 2, at::native::direct_copy_kernel_cuda>": "copy",
        "Memcpy DtoD (Device -> Device)": "copy",
        "void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>": "pointwise / other",
        "aten::addmm": "gemm", "aten::mkldnn_convolution": "conv", "aten::add": "pointwise / other",
    }
    assert {n: ks.kind_of(n) for n in names} == names
    assert ks._union_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17  # two streams at once: counted once


def test_gpu_v3_flops_per_call_are_what_the_flop_counter_counts(monkeypatch):
    """The V3 MFU is honest: the analytic FLOPs of one transformer call (as the sampler calls it, audio tokens
    precomputed) equal FlopCounterMode's count, products and attention each, on a tiny network whose prompt (5
    tokens) is padded to text_len 24 and whose latents are not square."""
    from torch.utils.flop_counter import FlopCounterMode

    from tests._v3_tiny import TINY, inputs, tiny_model

    bench = load_bench("gpu_v3", monkeypatch)
    bench._register_cpu_sdpa()
    model = tiny_model()
    inp = inputs(TINY, t_lat=3, h=4, w=6)
    with torch.no_grad():
        tokens = model.audio_tokens(inp.pop("audio_windows"))
        with FlopCounterMode(display=False) as fc:
            model(**inp, audio_tokens=tokens)
    counts = fc.get_flop_counts()["Global"]
    attention = sum(v for op, v in counts.items() if "attention" in str(op))
    want = bench.call_flops(TINY, (3, 4, 6))
    assert want["tokens"] == 3 * 2 * 3 and attention > 0
    assert (fc.get_total_flops() - attention, attention) == (want["linear"], want["attention"])
    assert bench.call_flops(TINY, (3, 4, 6), batch=2)["total"] == 2 * want["total"]


def test_gpu_v3_skips_what_its_budget_leaves_no_time_for_and_refuses_a_bad_length(monkeypatch, capsys):
    bench = load_bench("gpu_v3", monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--frames", "80"])
    assert "4k+1" in capsys.readouterr().err
    assert bench.main(["--tiny", "--device", "cpu", "--frames", "5", "--budget-s", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    res = json.loads(lines[-1])
    stages = ("eager", "vae_decode", "compiled", "sample_8_steps", "vae_encode")
    assert all(res[k].startswith("skipped (time budget") for k in stages), res
    assert res["shape"]["latent"] == [2, 8, 8] and res["flops_TF_per_call"]["total"] > 0
    assert len(lines) == 1 + len(stages) + 1 and json.loads(lines[0])["partial"]["setup_s"] > 0


def test_gpu_v3_fp8_stores_the_block_weights_in_fp8_and_runs_only_the_stages_asked_for(monkeypatch, capsys):
    """``--fp8`` times the low-memory path (the blocks' Linear weights in float8, as ``animate --fp8``); ``--stages``
    runs only the named stages, and a stage name it does not know is refused before any work."""
    bench = load_bench("gpu_v3", monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--frames", "5", "--stages", "eager,decode"])
    assert "unknown decode" in capsys.readouterr().err
    seen = {}
    real_setup = bench.setup

    def spy(args, device, dtype):
        st = real_setup(args, device, dtype)
        seen["dtypes"] = {m.weight.dtype for n, m in st["model"].named_modules()
                          if n.startswith("blocks.") and isinstance(m, torch.nn.Linear)}
        return st

    monkeypatch.setattr(bench, "setup", spy)
    assert bench.main(["--tiny", "--device", "cpu", "--frames", "5", "--repeat", "1", "--fp8", "--stages", "eager"]) == 0
    res = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert seen["dtypes"] == {torch.float8_e4m3fn} and res["fp8"] and res["eager"]["call_s"] > 0
    assert all(res[k] == "not asked for (--stages)" for k in ("vae_decode", "compiled", "sample_8_steps", "vae_encode"))


def test_gpu_v3_counts_the_calls_teacache_runs_as_the_sampler_does(monkeypatch):
    """The shot estimate's call count: TeaCache decisions from the time embeddings alone equal those of a real
    8-step loop (audio CFG), within the bounds any weights give (5 of every 8 calls always run)."""
    from echomimic_lib.pipeline.wan.sampler import V3Settings, sample_latents
    from tests._v3_tiny import TINY, inputs, tiny_model

    bench = load_bench("gpu_v3", monkeypatch)
    model = tiny_model()
    inp = inputs(TINY, t_lat=2, h=2, w=2)
    _, trace = sample_latents(model, inp["y"], inp["context"], inp["clip_fea"], inp["audio_windows"],
                              V3Settings(steps=8, teacache="official"), noise=torch.randn(1, 16, 2, 2, 2))
    assert len(trace) == 16 and bench.teacache_calls(model, 8) == sum(e["computed"] for e in trace)
    assert bench.teacache_calls_bounds(8) == [10, 12]
    assert bench.teacache_calls_bounds(8, cfg_calls=1) == [5, 8]


def test_gpu_v3_times_inference_calls_without_an_autograd_graph(monkeypatch):
    """At 48k tokens the saved activations of a call with autograd on would not fit on the GPU (eager and compiled)."""
    bench = load_bench("gpu_v3", monkeypatch)
    seen = []
    monkeypatch.setattr(bench, "call", lambda st: seen.append(torch.is_grad_enabled()) or st["model"](
        st["x"], st["t"], st["text"], st["clip"], st["y"], audio_tokens=st["tokens"]))
    monkeypatch.setattr(bench, "sample_shot", lambda st: {"seconds": 1.0})
    out = []
    bench.run(bench_args(bench), out.append)
    assert seen == [False] * 4 and out[-1]["eager"]["call_s"] > 0


def bench_args(bench):
    import argparse
    import time

    return argparse.Namespace(device="cpu", dtype=None, tiny=True, width=64, height=64, frames=5, repeat=1,
                              compile_backend="aot_eager", peak_tflops=None, budget_s=100.0, t0=time.perf_counter())


def test_the_cpu_sdpa_flop_formula_registers_once_per_process(monkeypatch):
    """gpu_suite, gpu_v3 and bench_pipeline all register it: a second call must be a no-op, not "duplicate registrations"."""
    from torch.utils.flop_counter import flop_registry

    bench = load_bench("bench_pipeline", monkeypatch)
    bench._register_cpu_sdpa()
    bench._register_cpu_sdpa()
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    assert op is None or op in flop_registry or op.default in flop_registry


def test_peak_tflops_tells_the_pcie_and_nvl_cards_from_the_sxm_ones(monkeypatch):
    """The MFU figures divide by the card's peak: an H100 PCIe (756 TFLOP/s dense fp16) must not be read as an SXM (989)."""
    import torch

    suite = load_bench("gpu_suite", monkeypatch)
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0, "NVIDIA H200": 989.0,
             "NVIDIA H200 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A10": 125.0, "NVIDIA L40S": 362.0,
             "NVIDIA GeForce RTX 4090": 165.0, "Some Future GPU": None}
    for name, peak in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d, n=name: n)
        assert suite.peak_tflops(torch.device("cuda"), None) == peak, name
    assert suite.peak_tflops(torch.device("cuda"), 500.0) == 500.0  # --peak-tflops wins
    assert suite.peak_tflops(torch.device("cpu"), None) is None
