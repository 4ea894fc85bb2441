"""context_windows: the uniform closed-loop schedule and its per-step shift, exactly."""
from __future__ import annotations

import json

from echomimic_lib.pipeline.context import base_windows, frame_counts, shift_windows

from ._common import ParityCase


def run(case: ParityCase) -> None:
    files = case.manifest.get("files", {})
    name = next(iter(files)) if files else "context_windows.json"
    data = json.loads(case.path(name).read_text())
    entries = data["entries"]
    assert entries, "no context-window configurations in the fixture"
    for e in entries:
        n, c, o, sh = e["num_frames"], e["context_size"], e["context_overlap"], e["shift_per_step"]
        assert e.get("context_stride", 1) == 1 and e.get("closed_loop", True), f"unsupported schedule options in {e}"
        label = f"F={n} context={c} overlap={o} shift={sh}"
        base = base_windows(n, c, o)
        assert base == e["base_windows"], f"{label}: base windows {base} != {e['base_windows']}"
        assert frame_counts(base, n) == e["frame_counts"], f"{label}: frame counts differ"
        for step in e["per_step"]:
            got = shift_windows(base, step["step_index"], sh, n)
            assert got == step["windows"], f"{label} step {step['step_index']}: {got} != {step['windows']}"
