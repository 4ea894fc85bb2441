"""Third trust audit, ``echomimic-train``: a destination inside a checkpoint folder (``run/checkpoints/step-N/``,
an existing one or the name of a later one) is refused before anything is read or written, since rotation
(``checkpoint.keep_last``) deletes that folder whole and a new save of its step replaces it: an export written there, or
a run's output_dir, would be lost. A ``--resume`` that is no run folder is a clear error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_trust import _fake_checkpoint


@pytest.fixture(autouse=True)
def _fresh_state():
    """fit and v3-fit each make an Accelerator (of their own mixed precision): none is left over between tests."""
    import logging

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    root = logging.getLogger()  # trainer.cli's basicConfig handler of an earlier test writes to its closed capture
    for h in [h for h in root.handlers if getattr(getattr(h, "stream", None), "closed", False)]:
        root.removeHandler(h)
    yield
    AcceleratorState._reset_state(True)


def _train(args, capsys):
    from trainer.cli import main

    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _v3(ckpt: Path) -> Path:
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "family": "v3", "lora": {**meta["lora"], "layers": 1}}))
    return ckpt


@pytest.mark.parametrize("command,lora", [("export", False), ("export", True), ("v3-export", True)],
                         ids=["export-full", "export-lora", "v3-export"])
@pytest.mark.parametrize("where", ["the-checkpoint", "inside-it", "a-later-step", "a-link-into-it"])
def test_an_export_into_a_checkpoint_folder_is_refused_before_anything_is_read(command, lora, where, tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, lora)
    if command == "v3-export":
        _v3(ckpt)
    run = ckpt.parent.parent
    (tmp_path / "link").symlink_to(ckpt)
    dest = {"the-checkpoint": ckpt, "inside-it": ckpt / "export", "a-later-step": run / "checkpoints" / "step-00000004",
            "a-link-into-it": tmp_path / "link" / "export"}[where]
    if command == "v3-export" or lora:
        dest = dest / "me.safetensors"
    before = _tree(run)
    rc, err = _train([command, ckpt, dest, "--no-verify"], capsys)
    assert rc == 2, err
    assert "is inside the checkpoint folder" in err and "rotates its checkpoints" in err and str(run / "export") in err, err
    assert _tree(run) == before  # nothing written, not even a folder


@pytest.mark.parametrize("command,lora", [("export", False), ("export", True), ("v3-export", True)],
                         ids=["export-full", "export-lora", "v3-export"])
def test_an_export_beside_the_checkpoints_is_still_written(command, lora, tmp_path, capsys, monkeypatch):
    import trainer.export as ex
    from echomimic_lib.config import EchoConfig

    monkeypatch.setattr(ex.EchoConfig, "from_dict", staticmethod(lambda d: EchoConfig()))
    monkeypatch.setattr(ex, "_place", lambda src, dst, link: None)  # the fake run has no VAE / whisper to copy
    ckpt = _fake_checkpoint(tmp_path, lora)
    if command == "v3-export":
        _v3(ckpt)
    dest = ckpt.parent.parent / "export"
    rc, err = _train([command, ckpt, dest, "--no-verify"], capsys)
    assert rc == 0, err
    assert any(p.suffix in (".safetensors", ".pth") for p in dest.iterdir())


def test_fit_refuses_an_output_dir_inside_another_runs_checkpoint_before_anything_is_written(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path)
    out = ckpt / "new-run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"preset: v1_stage1\noutput_dir: {out}\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, "
                   "weights: v1_pose}\n")
    rc, err = _train(["fit", "--config", cfg], capsys)
    assert rc == 2 and "output_dir" in err and "is inside the checkpoint folder" in err, err
    assert not out.exists()


def test_v3_fit_refuses_an_output_dir_inside_a_checkpoint_before_any_weight(tmp_path, capsys):
    ckpt = _fake_checkpoint(tmp_path, lora=True)
    out = ckpt / "v3-run"
    data = tmp_path / "data"
    data.mkdir()
    cfg = tmp_path / "v3.yaml"
    cfg.write_text(f"output_dir: {out}\nmodel: {{path: {tmp_path / 'no-models'}}}\ndata: {{roots: [{data}]}}\n")
    rc, err = _train(["v3-fit", "--config", cfg], capsys)
    assert rc == 2 and "is inside the checkpoint folder" in err, err  # before the missing models are even looked at
    assert not out.exists()


@pytest.mark.parametrize("what", ["a folder of other files", "a file"])
def test_resume_from_something_that_is_no_run_is_a_clear_error(what, tmp_path, capsys):
    mine = tmp_path / "mine"
    if what == "a file":
        mine.write_text("notes")
    else:
        mine.mkdir()
        (mine / "notes.txt").write_text("keep me")
    cfg = tmp_path / "c.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"preset: v1_stage1\noutput_dir: {out}\nmodel: {{init: echomimic, echomimic_path: {tmp_path}, "
                   "weights: v1_pose}\nloss: {spatial: {lpips: 0}}\n")  # (no LPIPS backbone to look for first)
    rc, err = _train(["fit", "--config", cfg, "--resume", mine], capsys)
    assert rc == 2 and "not a checkpoint folder, and no checkpoints under it" in err, err
    assert not out.exists() and (what == "a file" or (mine / "notes.txt").read_text() == "keep me")
