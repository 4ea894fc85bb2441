"""A step saved again (a resumed run saving the step it resumed from, or a run restarted at a step it had saved) must
never leave the run without that step's checkpoint: the earlier folder was deleted before the new one was renamed in,
so a kill between the two lost the step. Now the earlier one is kept aside (``.old-step-N``) until the new one is in
place, is found by resume while it is the step's only copy, and is cleaned up once the step has its new folder."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer import checkpoint as ck


class _Acc:
    """The parts of accelerate's Accelerator that save_checkpoint uses, one process."""

    distributed_type = "NO"
    is_main_process = True
    is_local_main_process = True
    project_configuration = SimpleNamespace(save_on_each_node=False)

    def __init__(self, payload: str):
        self.payload = payload

    def wait_for_everyone(self):
        pass

    def save_state(self, path, safe_serialization=True):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_text(self.payload)


def _payload(ckpt: Path) -> str:
    return (ckpt / "model.safetensors").read_text()


def test_a_step_saved_again_replaces_its_checkpoint_and_leaves_nothing_aside(tmp_path):
    ck.save_checkpoint(_Acc("first"), tmp_path, 100, {"family": "v1"}, keep_last=3)
    final = ck.save_checkpoint(_Acc("second"), tmp_path, 100, {"family": "v1"}, keep_last=3)
    assert _payload(final) == "second" and json.loads((final / "meta.json").read_text())["step"] == 100
    assert sorted(p.name for p in ck.checkpoint_dir(tmp_path).iterdir()) == ["step-00000100"]


def test_a_kill_between_the_two_renames_keeps_the_step_and_resume_finds_it(tmp_path, monkeypatch):
    ck.save_checkpoint(_Acc("first"), tmp_path, 50, {}, keep_last=5)
    ck.save_checkpoint(_Acc("first"), tmp_path, 100, {}, keep_last=5)
    real_replace = os.replace

    def killed_on_the_second(src, dst):
        if Path(src).name.startswith(".tmp-step-"):  # the new checkpoint's rename: the process dies here
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(_Acc("second"), tmp_path, 100, {}, keep_last=5)
    monkeypatch.setattr(ck.os, "replace", real_replace)

    root = ck.checkpoint_dir(tmp_path)
    latest = ck.resolve_resume(True, tmp_path)
    assert latest is not None and _payload(latest) == "first"  # step 100, not step 50: nothing was lost
    assert [step for step, _ in ck.list_checkpoints(root)] == [50, 100]
    assert latest in {p for _, p in ck.list_checkpoints(root)}
    # the next start clears the cut save but keeps the step's only copy
    gone = {p.name for p in ck.remove_partial(root)}
    assert gone == {".tmp-step-00000100"} and latest.is_dir()
    # the resumed run saves on: the kept-aside copy is rotated like any checkpoint
    ck.save_checkpoint(_Acc("third"), tmp_path, 150, {}, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == [".old-step-00000100", "step-00000150"]
    ck.save_checkpoint(_Acc("fourth"), tmp_path, 200, {}, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000150", "step-00000200"]


def test_a_copy_kept_aside_after_its_step_has_its_new_folder_is_removed_and_never_listed(tmp_path):
    root = ck.checkpoint_dir(tmp_path)
    ck.save_checkpoint(_Acc("new"), tmp_path, 100, {}, keep_last=3)
    old = root / ".old-step-00000100"  # a kill after the new rename, before the clean-up
    old.mkdir()
    (old / "meta.json").write_text("{}")
    (old / "model.safetensors").write_text("old")
    assert ck.list_checkpoints(root) == [(100, root / "step-00000100")]
    assert ck.remove_partial(root) == [old] and not old.exists()


def test_a_folder_inside_a_kept_aside_checkpoint_is_refused_as_an_output(tmp_path):
    from trainer.config import ConfigError

    inside = tmp_path / "checkpoints" / ".old-step-00000100" / "export"
    with pytest.raises(ConfigError, match="inside the checkpoint folder"):
        ck.refuse_inside_checkpoint(inside, "export destination")
