"""What the README's example commands print, where running them showed the text and the output apart
(a walk through README.md, docs/v3.md and docs/evaluation.md with tiny weights; see the helper's report)."""
from __future__ import annotations

from types import SimpleNamespace

from echomimic_lib.cli import main as cli


def test_make_tiny_report_says_the_command_line_needs_dwpose_for_a_pose_video(tmp_path, monkeypatch, capsys):
    """README: make-tiny lists DWPose's models in <models>/dwpose/ "for V2 poses from a video"; the report said
    "(ComfyUI)", as if `animate --pose VIDEO` / `echomimic poses --video` did without them (they stop on them)."""
    import echomimic_lib.tiny as tiny

    monkeypatch.setattr(tiny, "make_tiny", lambda target, **kw: target)  # the report, not the weights
    assert cli(["make-tiny", str(tmp_path / "m")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "yolox_l.onnx" in x)
    assert "--pose VIDEO" in line and "echomimic poses --video" in line, line


def test_batch_summary_names_results_jsonl_as_a_path(tmp_path, monkeypatch, capsys):
    """README's `echomimic batch jobs.csv -o renders/` printed `results in renders//results.jsonl`."""
    import echomimic_lib.jobs.batch as batch

    (tmp_path / "jobs.csv").write_text("name,reference,audio\n", encoding="utf-8")
    monkeypatch.setattr(batch, "read_manifest", lambda *a, **k: [])
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: SimpleNamespace(ok=0, skipped=0, failed=0, total=0, exit_code=0,
                                                                          records=[], stale={}))
    out = str(tmp_path / "renders") + "/"
    assert cli(["batch", str(tmp_path / "jobs.csv"), "-o", out]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith(f"results in {tmp_path / 'renders' / 'results.jsonl'}"), line


def test_landmark_only_status_line_does_not_claim_an_audio_track():
    """README: `animate --mode landmarks --landmarks driving.npz --reference anna.png -o anna.mp4` (no --audio) is the
    landmark-only mode, a silent video; its status line said `(audio 0.25 s)`, as if a sound track were used."""
    import torch

    from echomimic_lib.jobs.animate import AnimateRequest, describe

    def plan(audio):
        req = AnimateRequest(reference="anna.png", audio=audio, output="anna.mp4", mode="v1-landmarks")
        settings = SimpleNamespace(width=64, height=64, num_frames=6, fps=24.0, steps=1, cfg=2.5, seed=420)
        return SimpleNamespace(settings=settings, mode=SimpleNamespace(name="v1-landmarks"), variant="normal",
                               request=req, audio_seconds=0.25, device=torch.device("cpu"), dtype=torch.float32)

    silent, spoken = describe(plan(None)), describe(plan("a.wav"))
    assert "(audio 0.25 s)" in spoken
    assert "audio 0.25" not in silent and "no audio" in silent, silent


def test_evaluate_protocol_published_without_syncnet_does_not_promise_a_report(tmp_path, capsys, shared_data):
    """README: `echomimic evaluate out.mp4 --protocol published`. Without SyncNet's weights it stops (exit 2) and
    reports nothing, but its message ended 'the weight-free metrics are still reported'."""
    import numpy as np

    from echomimic_lib.io.video_io import write_video

    video = write_video(tmp_path / "out.mp4", np.zeros((8, 32, 32, 3), np.uint8), 24.0)
    rc = cli(["evaluate", str(video), "--protocol", "published", "--models", str(tmp_path), "--offline"])
    cap = capsys.readouterr()
    assert rc == 2 and "syncnet_v2.model" in cap.err and cap.out == ""
    assert "still reported" not in cap.err and "without --protocol published" in cap.err, cap.err
