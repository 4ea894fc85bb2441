"""``echomimic-train`` as a new user meets it (issue 13): an offline machine without the LPIPS backbone, a
prepare run that keeps nothing, one step numbering in log / checkpoints / progress bar, and a progress bar that
accelerate's INFO lines do not break."""
from __future__ import annotations

import re
import urllib.error

import pytest
import torch

from tests.test_trainer_helpers import (DATA, events, rows, shared_dir, train_cli, v1_config, whisper_path, write_yaml)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _offline(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(url, dst, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


def test_lpips_backbone_missing_offline_is_reported_before_training(base, tmp_path, monkeypatch, capsys):
    from trainer.cli import main

    _offline(monkeypatch, tmp_path)
    run = tmp_path / "run"
    cfg = write_yaml(tmp_path / "c.yaml", v1_config(base, run, steps=2, loss={"spatial": {"weight": 0.1, "lpips": 1.0}}))
    assert main(["fit", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err and "URLError" in err and "Traceback" not in err
    assert "loss.lpips.backbone_path" in err and "loss.spatial.lpips: 0" in err  # the two ways out
    assert not run.exists()  # nothing built, nothing written: it failed before the networks


def test_lpips_backbone_from_a_local_file(tmp_path, monkeypatch):
    import lpips

    from trainer.lpips_net import LPIPSWeightsError, build_lpips, resolve_backbone
    from trainer.config import LPIPSConfig

    _offline(monkeypatch, tmp_path)
    trunk = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).net.state_dict()
    torch.manual_seed(1)
    state = {"features." + k.split(".", 1)[1]: torch.randn_like(v) for k, v in trunk.items()}  # torchvision's key names
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")
    lp = LPIPSConfig(backbone_path=str(tmp_path / "alexnet-owt-7be5be79.pth"))
    fn = build_lpips("alex", device="cpu", backbone_path=resolve_backbone(lp))
    assert torch.equal(fn.module.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(fn.module.net.slice5, "10").weight, state["features.10.weight"])
    with pytest.raises(LPIPSWeightsError, match="is not a file"):
        resolve_backbone(LPIPSConfig(backbone_path=str(tmp_path / "missing.pth")))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth").write_bytes((tmp_path / "alexnet-owt-7be5be79.pth").read_bytes())
    assert resolve_backbone(LPIPSConfig()).parent == tmp_path / "hub" / "checkpoints"  # torch hub's cache is used offline


def test_prepare_that_keeps_nothing_exits_non_zero_and_says_why(base, tmp_path, capsys):
    from trainer.cli import main

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "talk.mp4").symlink_to(DATA / "video" / "driving_a.mp4")  # no audio stream, no sidecar
    assert main(["prepare", str(inp), str(tmp_path / "ds"), "--whisper", str(whisper_path(base)), "-q"]) == 2
    err = capsys.readouterr().err
    assert "no clip was kept" in err and "1 no_audio" in err and "clip.wav" in err
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), str(tmp_path / "ds2"), "--whisper", str(whisper_path(base)), "-q"]) == 2
    assert "no videos found" in capsys.readouterr().err


def test_step_numbers_agree_and_log_lines_do_not_break_the_progress_bar(base, tmp_path):
    run = tmp_path / "run"
    phases = [{"name": "stage1", "steps": 1}, {"name": "stage2", "steps": 2, "kind": "temporal", "frames": 2, "train": ["motion"]}]
    cfg = write_yaml(tmp_path / "c.yaml", v1_config(base, run, optim={"batch_size": 1}, model={"motion_init": "random"}, phases=phases,
                                                   checkpoint={"every": 2}, log={"every": 1, "progress": True}))
    r = train_cli("fit", "--config", cfg)
    assert [x["step"] for x in rows(run)] == [1, 2, 3]
    assert [e["step"] for e in events(run, "checkpoint")] == [2, 3] and events(run, "phase")[0]["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-00000002", "step-00000003"]
    bars = re.findall(r"fit:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", r.stderr)
    assert bars and bars[-1] == ("3", "3")  # the bar counts completed steps, like the checkpoints
    pieces = re.split(r"[\r\n]", r.stderr)
    assert "INFO trainer: step 2: phase stage2" in pieces  # logged inside the loop, on a line of its own
    assert not [p for p in pieces if "INFO" in p and "fit:" in p]  # no log line glued to the bar
    assert "INFO accelerate" not in r.stderr  # accelerate's per-file INFO lines are quiet
    table = r.stderr.split("phases:", 1)[1].split("INFO", 1)[0]
    assert "steps       1-1" in table and "steps       2-3" in table and "pose " not in table  # V1: no pose columns
