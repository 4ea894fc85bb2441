"""``echomimic-train plan`` refuses numbers that make no plan (0 or fewer GPUs, a zero or negative peak or memory, a
utilisation outside (0, 1]) with the fix, and prints no plan; before, it exited 0 with negative, zero or infinite step
times."""
from __future__ import annotations

import pytest

from trainer.cli import main


@pytest.mark.parametrize("args,words", [
    (["--gpus", "0"], ["--gpus 0", "1 to 16384"]),
    (["--gpus", "-4"], ["--gpus -4", "1 to 16384"]),
    (["--mfu", "0"], ["--mfu 0.0", "above 0 and at most 1"]),
    (["--mfu", "30"], ["--mfu 30.0", "0.3 means 30 %"]),
    (["--mfu", "nan"], ["--mfu nan", "above 0 and at most 1"]),
    (["--peak-tflops", "-1"], ["--peak-tflops -1.0", "a number above 0"]),
    (["--peak-tflops", "inf"], ["--peak-tflops inf", "a number above 0"]),
    (["--gpu-gib", "0"], ["--gpu-gib 0.0", "a number above 0"]),
    (["--set", "memory.gpu_gib=-2"], ["memory.gpu_gib: -2", "a number above 0"]),
])
def test_plan_refuses_numbers_that_make_no_plan(args, words, capsys):
    rc = main(["plan", "--preset", "v1_stage1"] + args)
    out, err = capsys.readouterr()
    assert rc == 2 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert "stage1" not in out  # no plan table


def test_a_sensible_plan_still_runs(capsys):
    assert main(["plan", "--preset", "v1_stage1", "--gpus", "1", "--mfu", "1", "--peak-tflops", "989", "--gpu-gib", "80"]) == 0
    assert "stage1" in capsys.readouterr().out
