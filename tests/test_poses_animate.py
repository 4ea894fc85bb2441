"""`echomimic animate --version v2 --pose VIDEO`: the driving video's poses extracted on the fly (the same code as
`echomimic poses --video`), a smoke render, batch rows with a video in the pose column, and bad input said first."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from echomimic_lib.cli import main as cli  # noqa: E402
from echomimic_lib.io.video_io import probe  # noqa: E402
from tests.test_poses_cli import driving, models, speech  # noqa: E402,F401 (module fixtures)


@pytest.fixture(scope="module")
def ref(shared_data):
    return shared_data / "images" / "halfbody_0035.png"


def _request(pose, speech, ref, models, out):  # noqa: F811
    from echomimic_lib.jobs.animate import AnimateRequest

    return AnimateRequest(reference=str(ref), audio=str(speech), output=str(out), mode="v2-halfbody", pose=str(pose),
                          models=str(models), download=False, device="cpu", width=64, height=64, retime="loop")


def test_pose_video_draws_what_the_kept_poses_draw(models, driving, speech, ref, tmp_path):  # noqa: F811
    """Extract once with `echomimic poses`, reuse: the condition animate draws from the .npz is the one it draws
    from the video itself."""
    from echomimic_lib.jobs.animate import prepare_condition
    from echomimic_lib.jobs.animate_checks import preflight

    kept = tmp_path / "walk.npz"
    assert cli(["poses", "--video", str(driving), "-o", str(kept), "--models", str(models), "--offline", "-q"]) == 0
    drawn = []
    for pose in (driving, kept):
        plan = preflight(_request(pose, speech, ref, models, tmp_path / "x.mp4"))
        cond = prepare_condition(plan.mode, plan.request, plan.reference, plan.settings.num_frames, plan.settings).condition
        assert cond.num_frames == plan.settings.num_frames == 36
        drawn.append(cond.render(list(range(cond.num_frames))))
    assert drawn[0].any() and np.array_equal(drawn[0], drawn[1])


def test_animate_smoke_with_a_pose_video(models, driving, speech, ref, tmp_path, monkeypatch):  # noqa: F811
    root = tmp_path / "models"  # the default models folder: DWPose there, the smoke run's tiny weights in its tiny/
    shutil.copytree(models / "dwpose", root / "dwpose")
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(root))
    out = tmp_path / "v2.mp4"
    rc = cli(["animate", "--version", "v2", "--smoke", "--reference", str(ref), "--audio", str(speech),
              "--pose", str(driving), "-o", str(out), "-q"])
    assert rc == 0
    info = probe(out)
    assert info["frames"] == 24 and info["audio_seconds"] == pytest.approx(1.0, abs=0.05)


def test_bad_pose_video_is_refused_before_any_weight(models, driving, speech, ref, tmp_path, capsys, monkeypatch):  # noqa: F811
    import echomimic_lib.model_set as model_set

    def loaded(*a, **k):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(model_set, "load_models", loaded)
    notes = tmp_path / "poses.txt"
    notes.write_text("not a video")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out" / "x.mp4"
    base = ["animate", "--version", "v2", "--reference", str(ref), "--audio", str(speech), "-o", str(out), "--offline", "-q",
            "--width", "64", "--height", "64"]
    for args, words in (
        (["--pose", str(notes), "--models", str(models)], ("--pose", "is read as a driving video", "`echomimic poses`")),
        (["--pose", str(driving), "--models", str(tmp_path / "empty")], ("yolox_l.onnx", "Without --offline")),
    ):
        assert cli(base + args) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        assert not out.parent.exists() or not list(out.parent.iterdir())
    assert cli(["animate", "--version", "v2", "--reference", str(ref), "--audio", str(speech), "-o", str(out), "-q"]) == 2
    assert "--pose VIDEO" in capsys.readouterr().err  # the missing-pose message names the new way


def test_batch_rows_take_a_pose_video(models, driving, speech, ref, tmp_path):  # noqa: F811
    from echomimic_lib.jobs.batch import read_manifest
    from echomimic_lib.jobs.batch.manifest import check_jobs

    (tmp_path / "empty").mkdir()
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("name,reference,audio,version,pose,models,offline,width,height\n"
                        f"ok,{ref},{speech},v2,{driving},{models},true,64,64\n"
                        f"nomodels,{ref},{speech},v2,{driving},{tmp_path / 'empty'},true,64,64\n")
    jobs = check_jobs(read_manifest(manifest, tmp_path / "out"))
    assert jobs[0].frames == 36  # the pose video read; its --offline models folder has no V2 set (an error row up front)
    assert "EchoMimic weights missing for 'v2'" in jobs[0].error
    assert "yolox_l.onnx" in jobs[1].error
