"""``echomimic-train prepare --kind full`` and ``prepare`` without ``--whisper`` (EchoMimicV3 data): whole frames in
their own aspect (shorter side ``--size``, never enlarged), the detector-free cleaning rules, 25 fps by default, no
whisper rows; the V3 trainer's windows read such a dataset, the V1/V2 trainer refuses it before building anything."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_trainer_helpers import DATA, MEDIAPIPE
from trainer.config import ConfigError
from trainer.data.clean import PrepareConfig, check_clip, check_options
from trainer.data.store import ClipReader, read_manifest


def _run(args, capsys):
    from trainer.cli import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return rc, out.out, out.err


def _frames(n: int, width: int, height: int) -> np.ndarray:
    """``n`` frames of the shared driving video, resized (consecutive frames: no scene cut)."""
    import cv2

    from echomimic_lib.io.video_io import read_video

    src = read_video(DATA / "video" / "driving_a.mp4", max_frames=n, with_audio=False).frames
    return np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in src])


def _video(path: Path, frames: np.ndarray, speech: bool = True) -> None:
    from echomimic_lib.io.video_io import write_video

    write_video(path, frames, 25.0)
    if speech:
        shutil.copy(DATA / "audio" / "echomimic_en.wav", path.with_suffix(".wav"))


@pytest.fixture(scope="module")
def full_set(tmp_path_factory):
    """The shared driving video with its sidecar speech, a landscape clip, a clip smaller than --size, a silent clip
    and a clip with a cut, prepared with --kind full --size 64 and no --whisper."""
    tmp = tmp_path_factory.mktemp("full")
    inp = tmp / "in"
    inp.mkdir()
    shutil.copy(DATA / "video" / "driving_a.mp4", inp / "driving_a.mp4")
    shutil.copy(DATA / "audio" / "echomimic_en.wav", inp / "driving_a.wav")
    _video(inp / "wide.mp4", _frames(40, 160, 96))
    _video(inp / "small.mp4", _frames(40, 96, 48))
    _video(inp / "silent.mp4", _frames(40, 96, 48), speech=False)
    blank = np.full((20, 48, 96, 3), 255, np.uint8)
    _video(inp / "cut.mp4", np.concatenate([_frames(20, 96, 48), blank]))
    with pytest.MonkeyPatch.context() as mp:  # the whisper encoder is never loaded without --whisper
        mp.setattr("trainer.data.clip.Tools.whisper", property(lambda self: (_ for _ in ()).throw(AssertionError("loaded"))))
        from trainer.cli import main

        rc = main(["prepare", str(inp), str(tmp / "ds"), "--kind", "full", "--size", "64", "--max-seconds", "2", "-q"])
    assert rc == 0
    return tmp / "ds"


def test_full_kind_keeps_whole_frames_at_25_fps_without_whisper(full_set):
    report = {json.loads(line)["id"]: json.loads(line) for line in (full_set / "report.jsonl").read_text().splitlines()}
    assert {k: (r["status"], r["reason"]) for k, r in report.items()} == {
        "driving_a": ("ok", ""), "wide": ("ok", ""), "small": ("ok", ""), "silent": ("dropped", "no_audio"),
        "cut": ("dropped", "scene_cut")}
    entries = {e.id: e for e in read_manifest(full_set)}
    assert all(e.kind == "full" and e.fps == 25.0 for e in entries.values())
    assert entries["driving_a"].num_frames == 50 and entries["wide"].num_frames == 40  # 2 s at 25 fps; the whole clip
    sizes = {}
    for cid, e in entries.items():
        clip = ClipReader(e.path)
        assert not clip.has("whisper") and not clip.has("landmarks") and clip.kind == "full"
        assert len(clip.array("audio16k")) == round(e.num_frames / 25 * 16000)
        sizes[cid] = clip.frame(0).shape[:2][::-1]
        assert list(sizes[cid]) == clip.meta["frame_size"]
    # the shorter side is --size, the aspect kept, sides even; a source below --size is not enlarged
    assert sizes == {"driving_a": (64, 64), "wide": (106, 64), "small": (96, 48)}
    config = json.loads((full_set / "prepare_config.json").read_text())
    assert config["kind"] == "full" and config["fps"] == 25.0 and config["size"] == 64


def test_v3_windows_read_a_full_dataset(full_set):
    from trainer.v3.config import V3Data
    from trainer.v3.windows import list_windows, window_audio, window_pixels

    wins = list_windows(V3Data(roots=[str(full_set)], frames=9, width=64, height=48))
    by_clip = {}
    for w in wins:
        by_clip.setdefault(w.clip_id, []).append(w.start)
    assert by_clip == {"driving_a": [0, 9, 18, 27, 36], "small": [0, 9, 18, 27], "wide": [0, 9, 18, 27]}
    assert not any(w.silent for w in wins)  # speech-driven clips: their audio trains
    for cid in ("driving_a", "wide", "small"):
        win = next(w for w in wins if w.clip_id == cid)
        px = window_pixels(win, 64, 48)
        assert px.shape == (9, 48, 64, 3) and px.dtype == np.uint8 and px.std() > 5
    assert window_audio(wins[0]).shape[0] > 0


def test_v1_trainer_refuses_full_and_whisperless_datasets_before_building(full_set, tmp_path, capsys, monkeypatch):
    from trainer.config_file import load_config
    from trainer.data.dataset import build_pools

    def cfg(root, out=None):
        return load_config(None, ["model.init=random", "model.arch=tiny", f"data.roots=[{root}]", "data.width=64", "data.height=64",
                                  f"output_dir={out or tmp_path / 'run'}", "loss.spatial.lpips=0"], preset="v1_stage1")

    with pytest.raises(ConfigError, match="prepared with --kind full .*EchoMimicV3.*--kind headshot"):
        build_pools(cfg(full_set))
    # a headshot dataset prepared without --whisper: no whisper.npy, refused with the fix
    inp = tmp_path / "in"
    inp.mkdir()
    shutil.copy(DATA / "video" / "driving_a.mp4", inp / "talk.mp4")
    shutil.copy(DATA / "audio" / "echomimic_en.wav", inp / "talk.wav")
    rc, out, _ = _run(["prepare", inp, tmp_path / "hs", "--size", "64", "--max-seconds", "1.2", "--mediapipe-model", MEDIAPIPE, "-q"],
                      capsys)
    assert rc == 0 and "prepared without --whisper: no whisper.npy was written" in out
    [entry] = read_manifest(tmp_path / "hs")
    assert entry.kind == "headshot" and entry.fps == 24.0 and not (entry.path / "whisper.npy").exists()
    assert (entry.path / "landmarks.npy").is_file()
    with pytest.raises(ConfigError) as err:
        build_pools(cfg(tmp_path / "hs"))
    msg = str(err.value)
    assert "talk: prepared without --whisper" in msg and "--whisper MODELS/audio_processor/whisper_tiny.pt" in msg
    # `fit` stops there: no network built, nothing written
    import trainer.init

    monkeypatch.setattr(trainer.init, "build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network built")))
    from trainer.loop import fit

    with pytest.raises(ConfigError, match="prepared without --whisper"):
        fit(cfg(tmp_path / "hs", tmp_path / "run2"))
    assert not (tmp_path / "run2").exists()


def test_cleaning_without_a_detector_keeps_the_order_of_the_rules():
    c = PrepareConfig(kind="full")
    ok = dict(n_frames=50, seconds=2.0, face_counts=None, face_heights_px=None, cut_scores=np.full(49, 3.0), has_audio=True)
    assert check_clip(c, **ok).ok and check_clip(c, **ok).detail == "50 frames"
    assert check_clip(c, **{**ok, "has_audio": False, "seconds": 0.1}).reason == "no_audio"
    assert check_clip(c, **{**ok, "seconds": 0.5, "cut_scores": np.full(49, 60.0)}).reason == "too_short"
    assert check_clip(c, **{**ok, "cut_scores": np.r_[np.full(20, 3.0), 60.0]}).reason == "scene_cut"


def test_frame_rate_defaults_and_options_of_the_full_kind(tmp_path, capsys):
    from trainer.cli import build_parser
    from trainer.data.curate_config import CurateConfig

    assert PrepareConfig().fps == 24.0 and PrepareConfig(kind="full").fps == 25.0  # V1/V2 at 24, V3 at 25
    assert PrepareConfig(kind="headshot", fps=25.0).fps == 25.0 and PrepareConfig(kind="full", fps=24.0).fps == 24.0
    check_options(PrepareConfig(kind="headshot", fps=25.0))  # a V3 user may prepare headshots at 25 fps
    with pytest.raises(ValueError, match="--kind full runs no detector"):
        check_options(PrepareConfig(kind="full", curate=CurateConfig(max_camera_motion=0.05)))
    with pytest.raises(ValueError, match="headshot, halfbody, pose or full"):
        check_options(PrepareConfig(kind="crop"))
    args = build_parser().parse_args(["prepare", "in", "out", "--kind", "full"])
    assert args.whisper is None and args.fps is None  # --whisper optional; the fps follows the kind
    (tmp_path / "in").mkdir()
    rc, _, err = _run(["prepare", tmp_path / "in", tmp_path / "ds", "--kind", "full", "--cache-latents", tmp_path / "vae"], capsys)
    assert rc == 2 and "--cache-latents" in err and "EchoMimicV3" in err and not (tmp_path / "ds").exists()
    rc, _, err = _run(["prepare", tmp_path / "in", tmp_path / "ds", "--kind", "full", "--whisper", tmp_path / "none.pt"], capsys)
    assert rc == 2 and "--whisper" in err and "file not found" in err and not (tmp_path / "ds").exists()
