"""A researcher fine-tuning with ``echomimic-train`` (sixth hunt): a folder of their own clips, V3 resume, presets,
loading the result back.

Before: videos named in Chinese, Japanese, Cyrillic (``日本.mp4``, ``中国.mp4``) all became clip ``_``, so a folder of
them was refused as one clip id ("rename one of them") and a kept clip was listed as ``_``; ``v3-fit --resume`` with
another ``lora.rank`` / ``alpha`` / ``targets`` encoded every window, built the transformer, then failed in accelerate
with a "size mismatch" traceback, having replaced the run's ``config.yaml`` with the new settings; ``fit --set
preset=NAME`` (or ``--preset NAME`` beside a file's ``preset:``) was ignored without a word (a misspelt name too) while
the run's ``config.yaml`` recorded the name; ``echomimic animate --lora RUN_FOLDER`` said "LoRA file not found" of a
folder that is there, and a checkpoint's ``model.safetensors`` was "not an EchoMimic LoRA" / "tensors of a kind this
reader does not know", never that it must be exported first; ``fit`` ended without naming the export command, and
``export`` of a LoRA into a folder said "exported 1 files to DEST" without the file's name or how to load it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_train_user_4 import Built, _train, _yaml, nothing_built  # noqa: F401 - fixture
from tests.test_train_user_5 import v3_run
from tests.test_trust_audit3_train import _fresh_state  # noqa: F401 - autouse fixture


def _clip(path: Path, frames: int = 30, fps: int = 25, size=(32, 24)) -> Path:
    """A tiny clip with a sine tone (so prepare keeps it: sound, long enough, no scene cut)."""
    import av

    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        a.layout = "mono"
        for i in range(frames):
            img = np.full((h, w, 3), 60 + i, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        n = frames * 16000 // fps
        tone = (0.1 * np.sin(np.arange(n) / 16000 * 2 * np.pi * 220)).astype(np.float32)
        for s in range(0, n, 1024):
            fr = av.AudioFrame.from_ndarray(tone[None, s:s + 1024], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, s
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


# 1. videos named in other scripts ---------------------------------------------------------------------------------

def test_videos_named_in_other_scripts_keep_their_names_as_clip_ids(tmp_path):
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare import clip_id, prepare_dataset

    src = tmp_path / "videos"
    (src / "Москва").mkdir(parents=True)
    for name in ("日本.mp4", "中国.mp4", "Москва/Ölçü über.mp4"):
        _clip(src / name)
    summary = prepare_dataset(src, tmp_path / "data", PrepareConfig(kind="full", fps=25.0, size=64), None, progress=False)
    assert summary["kept"] == 3, summary["rows"]
    ids = sorted(json.loads(line)["id"] for line in (tmp_path / "data" / "manifest.jsonl").read_text().splitlines())
    assert ids == sorted(["日本", "中国", "Москва__Ölçü_über"])
    # macOS writes names decomposed (O + combining diaeresis): the same clip id as the composed name
    assert clip_id(src / "Mo\u0308we.mp4", src) == clip_id(src / "M\u00f6we.mp4", src) == "M\u00f6we"


def test_a_dataset_prepared_with_the_old_ids_keeps_its_clips(tmp_path):
    """A dataset prepared before (日本.mp4 as clip '_') is resumed under that id: not prepared again as a second clip."""
    from trainer.data.prepare import check_clip_ids, clip_id

    src, out = tmp_path / "videos", tmp_path / "data"
    src.mkdir()
    (out / "status").mkdir(parents=True)
    for name in ("日本.mp4", "中国.mp4"):
        (src / name).write_bytes(b"x")
    (out / "status" / "_.json").write_text(json.dumps({"id": "_", "status": "ok", "seconds": 1.0,
                                                       "source_stamp": {"path": "日本.mp4", "size": 1, "mtime": 0}}))
    assert clip_id(src / "日本.mp4", src, out) == "_"
    assert clip_id(src / "中国.mp4", src, out) == "中国"  # another video's old id is not taken
    check_clip_ids(sorted(src.iterdir()), src, out)  # no clash


def test_a_very_long_name_gets_a_clip_id_the_file_system_can_hold(tmp_path):
    from trainer.data.prepare import clip_id

    long_a, long_b = "語" * 120 + "a.mp4", "語" * 120 + "b.mp4"
    a, b = clip_id(tmp_path / long_a, tmp_path), clip_id(tmp_path / long_b, tmp_path)
    assert len((a + ".partial").encode()) < 255 and len(f".old~{b}.json".encode()) < 255
    assert a != b and a.startswith("語" * 10)


# 2. v3-fit --resume with other adapter settings ---------------------------------------------------------------------

@pytest.mark.parametrize("sets,words", [
    (["lora.rank=8"], "lora.rank 4 (this config: 8)"),
    (["lora.alpha=8"], "lora.alpha 4.0 (this config: 8.0)"),
    (["lora.targets=[self_attn.q]"], "lora.targets"),
])
def test_v3_resume_with_other_adapter_settings_is_refused_before_anything_loads(sets, words, tmp_path, capsys, monkeypatch):
    from trainer.v3.config import DEFAULT_TARGETS

    _, run, cfg = v3_run(tmp_path, monkeypatch, extra="lora: {rank: 4, alpha: 4}\n")
    ckpt = run / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    saved = {"rank": 4, "alpha": 4.0, "dropout": 0.0, "targets": list(DEFAULT_TARGETS), "fp32_inputs": True}
    (ckpt / "meta.json").write_text(json.dumps({"family": "v3", "step": 2, "config": {"lora": saved}}))
    rc, err = _train(["v3-fit", "--config", cfg, "--resume", *sum((["--set", s] for s in sets), [])], capsys)
    assert rc == 2 and words in err and "another run" in err, err
    assert f"echomimic-train v3-fit --config {run / 'config.yaml'} --resume" in err and "Nothing was written" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # no config.yaml replaced or written


def test_v3_resume_with_the_same_adapters_goes_on(tmp_path, capsys, monkeypatch):
    """The check passes the run's own settings (and a checkpoint of an older version without them): the next work,
    the encoders, starts."""
    from accelerate.state import AcceleratorState

    from trainer.v3.config import DEFAULT_TARGETS, load_v3_config
    from trainer.v3.loop import fit_v3

    _, run, cfg = v3_run(tmp_path, monkeypatch, extra="lora: {rank: 4, alpha: 4}\n")
    ckpt = run / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    for config in ({"lora": {"rank": 4, "alpha": 4, "targets": list(reversed(DEFAULT_TARGETS))}}, None):
        (ckpt / "meta.json").write_text(json.dumps({"family": "v3", "step": 2, **({"config": config} if config else {})}))
        AcceleratorState._reset_state(True)
        with pytest.raises(Built):
            fit_v3(load_v3_config(cfg), resume=True)


# 3. presets chosen on the command line ------------------------------------------------------------------------------

def test_set_preset_chooses_the_preset(tmp_path):
    from trainer.config_file import load_config

    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\n")
    chosen = load_config(cfg, ["preset=v1_lora_identity", "lora.rank=8"])
    assert chosen.preset == "v1_lora_identity" and [p.name for p in chosen.phases] == ["lora"] and chosen.lora.enabled
    same = load_config(_yaml(tmp_path, tmp_path / "run", "preset: v1_lora_identity\n"), ["lora.rank=8"])
    assert chosen.to_dict() == same.to_dict()


def test_a_misspelt_set_preset_is_refused_before_anything_is_built(tmp_path, capsys, nothing_built):
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_lora_identity\n")
    rc, err = _train(["fit", "--config", cfg, "--set", "preset=v1_lora_identiy"], capsys)
    assert rc == 2 and "unknown 'v1_lora_identiy' (did you mean 'v1_lora_identity'?)" in err, err
    assert not (tmp_path / "run").exists()


def test_preset_option_beside_another_preset_in_the_file_is_refused(tmp_path, capsys, nothing_built):
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_lora_identity\n")
    rc, err = _train(["fit", "--config", cfg, "--preset", "v1_stage1"], capsys)
    assert rc == 2 and "--preset v1_stage1" in err and "preset: v1_lora_identity" in err, err
    assert "--set preset=v1_stage1" in err, err  # the way to choose another one
    assert not (tmp_path / "run").exists()


# 4. loading the result back: a run or checkpoint folder given as --lora ---------------------------------------------

@pytest.mark.parametrize("reader", ["v1", "v3"])
def test_a_run_folder_given_as_lora_says_to_export_it(reader, tmp_path):
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora

    run = tmp_path / "runs" / "anna"
    (run / "checkpoints" / "step-00000004").mkdir(parents=True)
    read, export = (read_lora, "echomimic-train export") if reader == "v1" else (read_wan_lora, "echomimic-train v3-export")
    with pytest.raises(WeightsError) as e:
        read(run)
    msg = str(e.value)
    assert "not found" not in msg and "a folder" in msg and f"{export} {run} " in msg, msg


@pytest.mark.parametrize("reader", ["v1", "v3"])
def test_a_checkpoints_weights_given_as_lora_say_to_export_them(reader, tmp_path):
    import torch
    from safetensors.torch import save_file

    from echomimic_lib.errors import WeightsError
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora

    ckpt = tmp_path / "runs" / "anna" / "checkpoints" / "step-00000004"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": 4}))
    key = "blocks.0.cross_attn.k.lora_A.default.weight" if reader == "v3" else "denoiser.conv_in.lora_A.default.weight"
    save_file({key: torch.zeros(4, 8)}, str(ckpt / "model.safetensors"))
    read, export = (read_lora, "echomimic-train export") if reader == "v1" else (read_wan_lora, "echomimic-train v3-export")
    with pytest.raises(WeightsError) as e:
        read(ckpt / "model.safetensors")
    msg = str(e.value)
    assert "training checkpoint" in msg and f"{export} {ckpt} " in msg, msg


# 5. what to do with the result: the export's file and how to load it ----------------------------------------------

def test_exporting_a_lora_names_the_file_and_how_to_load_it(tmp_path, capsys):
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, True)
    assert main(["export", str(ckpt), str(tmp_path / "loras"), "--no-verify"]) == 0
    out = capsys.readouterr().out
    file = tmp_path / "loras" / "run-step2.safetensors"
    assert file.is_file() and f"wrote the LoRA {file}" in out, out
    assert f"echomimic animate --models {tmp_path} --lora {file}" in out, out  # the base it was trained on


def test_a_finished_fit_names_the_export_command(monkeypatch, tmp_path, capsys):
    import trainer.loop as loop
    from trainer.cli import main

    monkeypatch.setattr(loop, "fit", lambda cfg, resume=None: {"step": 4, "output_dir": cfg.output_dir})
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\n")
    assert main(["fit", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"echomimic-train export {tmp_path / 'run'} EXPORT/" in out, out


def test_the_finished_line_is_said_once_with_several_processes(monkeypatch, tmp_path, capsys):
    """``accelerate launch --num_processes 2 -m trainer fit``: every process printed "finished at step N ..."."""
    import trainer.loop as loop
    from trainer.cli import main

    monkeypatch.setattr(loop, "fit", lambda cfg, resume=None: {"step": 4, "output_dir": cfg.output_dir})
    cfg = _yaml(tmp_path, tmp_path / "run", "preset: v1_stage1\n")
    monkeypatch.setenv("RANK", "1")
    assert main(["fit", "--config", str(cfg)]) == 0
    assert "finished at step" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert main(["fit", "--config", str(cfg)]) == 0
    assert "finished at step 4" in capsys.readouterr().out
