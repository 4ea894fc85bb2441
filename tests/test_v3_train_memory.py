"""bench/bench_v3_train_memory.py (the peak GPU memory of an EchoMimicV3 LoRA training step, computed without a GPU)
on the tiny transformer: the computed figure equals a real CPU run of the same step counted by the allocation tracker,
and it moves as memory does (checkpointing, frames, rank, the bf16 base and float32 adapters)."""
from __future__ import annotations

import json

import pytest

from tests._bench import load_bench

# computed (fake tensors) vs a real CPU step, bytes: equal (torch 2.14); a margin of four 512-byte blocks for scalar
# constants another torch may lift into tensors (0.1 % of the tiny step's 1.6 MB)
AGREE_BYTES = 4 * 512


@pytest.fixture
def bench(monkeypatch):
    return load_bench("bench_v3_train_memory", monkeypatch)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_computed_peak_is_a_real_steps_peak(bench, checkpointing):
    """The same step run for real on the CPU (real values, real AdamW, the trainer's sigma draw) and counted by the
    tracker: its peak, and what is alive when backward starts, are the computed ones."""
    computed = bench.measure(17, 64, checkpointing, rank=8, preset="tiny", device="fake")
    real = bench.measure(17, 64, checkpointing, rank=8, preset="tiny", device="cpu", time_steps=1)
    assert abs(real["peak_bytes"] - computed["peak_bytes"]) <= AGREE_BYTES, (real["peak_bytes"], computed["peak_bytes"])
    assert abs(real["parts_bytes"]["kept_activations"] - computed["parts_bytes"]["kept_activations"]) <= AGREE_BYTES
    assert len(real["losses"]) == 2 and all(0 < x < 100 for x in real["losses"]) and real["s_per_step"] > 0
    assert computed["losses"] == [] and set(computed["stages_gb"]) == {"forward", "backward", "optimizer"}


def test_checkpointing_frames_and_rank_move_the_peak(bench):
    def peak(frames, ck, rank=32):
        return bench.measure(frames, 64, ck, rank=rank, preset="tiny")

    on, off = peak(9, True), peak(9, False)
    on_long, off_long = peak(33, True), peak(33, False)
    assert on["peak_bytes"] < off["peak_bytes"] and on_long["peak_bytes"] < off_long["peak_bytes"]
    assert on["peak_bytes"] < on_long["peak_bytes"] and off["peak_bytes"] < off_long["peak_bytes"]
    # without checkpointing every block's activations are kept for the backward: they grow faster with the frames
    kept = lambda r: r["parts_bytes"]["kept_activations"]  # noqa: E731
    assert kept(off_long) - kept(off) > 2 * (kept(on_long) - kept(on)) > 0
    assert off["dominant"] == "kept_activations"
    assert peak(17, True, rank=4)["peak_bytes"] < peak(17, True, rank=32)["peak_bytes"]  # (32: the tiny width)


def test_weights_and_adamw_state_are_in_the_step(bench):
    """The frozen base in bf16, the adapters in float32 (the trainer's cast), and AdamW's two float32 moments of every
    adapter parameter there from the step's start (a steady step, not the first)."""
    r = bench.measure(9, 32, True, rank=16, preset="tiny")
    assert r["parts_bytes"]["adamw_state"] == 8 * r["adapter_params"]
    assert r["parts_bytes"]["weights"] == 2 * r["base_params"] + 4 * r["adapter_params"]
    assert r["lora_layers"] == 2 * 12  # the default targets in both blocks of the tiny transformer


def test_cli_json_and_bad_input(bench, capsys):
    assert bench.main(["--preset", "tiny", "--frames", "9", "--size", "32", "--checkpointing", "off", "--json"]) == 0
    out = capsys.readouterr().out
    row = json.loads(out.strip().splitlines()[-1])
    assert row["frames"] == 9 and row["size"] == 32 and row["checkpointing"] is False and row["device"] == "fake"
    assert "dominant" in out.splitlines()[1]  # the table's header
    for argv, msg in ((["--frames", "50"], "4k+1"), (["--size", "500"], "multiple of 16"), (["--device", "cpu"], "--preset tiny"),
                      (["--time-steps", "2"], "--device cuda or cpu")):
        assert bench.main([*argv, "--preset", "full" if "--device" in argv else "tiny"]) == 2
        assert msg in capsys.readouterr().err
    assert bench.parse_rows("49x512:on,81x768:off,33x512") == [(49, 512, True), (81, 768, False), (33, 512, True)]
    with pytest.raises(SystemExit, match="FRAMESxSIZE"):
        bench.parse_rows("49by512")


@pytest.mark.slow
def test_official_size_row(bench):
    """The release's transformer: 360 adapted layers, 49.6 M adapter parameters at rank 32, 3.9 GB of weights; gradient
    checkpointing divides the peak of 33 frames at 512 px by more than 4."""
    on, off = bench.measure(33, 512, True), bench.measure(33, 512, False)
    assert on["lora_layers"] == 360 and on["adapter_params_M"] == pytest.approx(49.64, abs=0.01)
    assert on["parts_gb"]["weights"] == pytest.approx(3.93, abs=0.01)
    assert 5 < on["peak_gb"] < 10 and off["peak_gb"] > 4 * on["peak_gb"]
