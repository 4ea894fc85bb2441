"""Trainer data: prepare (cleaning rules, report, resume, shards), on-disk streaming, the resumable
sampler, Random Landmark Selection and audio augmentation."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from trainer.config_file import load_config
from trainer.data.augment import apply_audio_aug, augmented_chunks, draw_audio_aug, rls_parts, stored_chunks
from trainer.data.clean import PrepareConfig, check_clip, clip_square
from trainer.data.dataset import EchoDataset, ResumableSampler, build_pools
from trainer.data.prepare import prepare_dataset, summary_table
from trainer.data.store import ClipReader, read_manifest
from tests.test_trainer_helpers import DATA, MEDIAPIPE, headshot_dataset, shared_dir, whisper_path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return shared_dir(tmp_path_factory)


def _v1_cfg(base, *over):
    return load_config(None, ["model.init=random", "model.arch=tiny", f"data.roots=[{headshot_dataset(base)}]", "data.width=64",
                              "data.height=64", "data.audio_aug.noise_prob=0", "data.audio_aug.gain_prob=0",
                              "data.audio_aug.shift_prob=0", *over], preset="v1_stage1")


def _v1_cfg_offline(over):
    return load_config(None, ["model.init=random", "model.arch=tiny", *over], preset="v1_stage1")


def test_cleaning_rules_on_numbers():
    c = PrepareConfig()
    ok = dict(n_frames=48, seconds=2.0, face_counts=np.ones(48), face_heights_px=np.full(48, 200.0), cut_scores=np.full(47, 3.0), has_audio=True)
    assert check_clip(c, **ok).ok
    assert check_clip(c, **{**ok, "has_audio": False}).reason == "no_audio"
    assert check_clip(c, **{**ok, "seconds": 0.5}).reason == "too_short"
    assert check_clip(c, **{**ok, "face_counts": np.r_[np.zeros(10), np.ones(38)]}).reason == "no_face"
    assert check_clip(c, **{**ok, "face_counts": np.r_[np.full(5, 2), np.ones(43)]}).reason == "multiple_faces"
    assert check_clip(c, **{**ok, "face_heights_px": np.full(48, 50.0)}).reason == "face_too_small"
    assert check_clip(c, **{**ok, "cut_scores": np.r_[np.full(20, 3.0), 60.0, np.full(26, 3.0)]}).reason == "scene_cut"
    assert check_clip(c, **{**ok, "face_counts": np.r_[np.zeros(2), np.ones(46)]}).ok  # a few missing faces are tolerated


def test_training_crop_frames_the_face_like_inference():
    from echomimic_lib.landmarks.preprocess import v1_face_mask_and_crop

    box = np.array([300.0, 150.0, 400.0, 280.0])  # a 100 x 130 face (mesh extent) in a 1280 x 720 frame
    inference = v1_face_mask_and_crop(np.zeros((720, 1280, 3), np.uint8), box).square
    moving = np.stack([box, box + [6, -3, 6, -3], box - [6, -3, 6, -3]])  # the head moves a little over the clip
    x, y, side = clip_square(moving, 1280, 720, 0.5)
    assert (x, y, x + side, y + side) == inference  # one rule: the reference's crop at inference
    assert (box[2] - box[0]) / side == 0.5  # the face fills half the crop's width in training as at inference
    x, y, side = clip_square(np.array([[0.0, 0.0, 400.0, 460.0]]), 640, 480, 0.5)
    assert 0 <= x and 0 <= y and x + side <= 640 and y + side <= 480  # clipped to the frame


def test_joint_unconditional_dropout():
    from trainer.data.augment import draw_dropout

    d = _v1_cfg_offline(["data.drop_all=0.1"]).data
    rng = np.random.default_rng(0)
    draws = np.array([draw_dropout(rng, d) for _ in range(20000)])
    joint = float(draws.all(1).mean())
    assert 0.09 < joint < 0.11  # every condition dropped at once: the sampler's unconditional branch
    single = draws[~draws.all(1)].mean(0)
    assert np.allclose(single, 0.05, atol=0.01)  # the independent drops on the other samples
    d.drop_all = 0.0
    assert np.array([draw_dropout(rng, d) for _ in range(20000)]).all(1).mean() < 0.001


def _write(path, frames, wav=None):
    from echomimic_lib.io.video_io import write_video

    write_video(path, frames, 24.0)
    if wav:
        path.with_suffix(".wav").symlink_to(DATA / "audio" / wav)


def test_prepare_drops_with_reasons_reports_and_resumes(base, tmp_path):
    from echomimic_lib.io.video_io import read_video

    src = read_video(DATA / "video" / "driving_a.mp4", max_frames=48, with_audio=False).frames
    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    (inp / "good.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    (inp / "good.wav").symlink_to(DATA / "audio" / "echomimic_en.wav")
    (inp / "silent.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    import cv2

    other = cv2.resize(cv2.cvtColor(cv2.imread(str(DATA / "images" / "portrait_b.png")), cv2.COLOR_BGR2RGB), (512, 512))
    _write(inp / "sub" / "cut.mp4", np.concatenate([src[:24], np.repeat(other[None], 24, 0)]), "echomimic_en.wav")
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    _write(inp / "noface.mp4", np.repeat(ramp[None], 48, 0), "echomimic_en.wav")
    _write(inp / "small.mp4", np.stack([cv2.resize(f, (96, 96)) for f in src]), "echomimic_en.wav")
    cfg = PrepareConfig(size=64, max_seconds=2.0, num_shards=3)
    s = prepare_dataset(inp, tmp_path / "ds", cfg, whisper_path(base), landmarker_model=MEDIAPIPE, progress=False)
    reasons = {r["id"]: (r["status"], r["reason"]) for r in s["rows"]}
    assert reasons == {"good": ("ok", ""), "silent": ("dropped", "no_audio"), "sub__cut": ("dropped", "scene_cut"),
                       "noface": ("dropped", "no_face"), "small": ("dropped", "face_too_small")}
    table = summary_table(s)
    for word in ("kept", "scene_cut", "no_audio", "no_face", "face_too_small"):
        assert word in table
    assert [e.id for e in read_manifest(tmp_path / "ds")] == ["good"]
    assert len((tmp_path / "ds" / "report.jsonl").read_text().splitlines()) == 5
    # a re-run skips every finished clip; an interrupted clip (no status, stale .partial folder) is redone
    entry = read_manifest(tmp_path / "ds")[0]
    (tmp_path / "ds" / "status" / "good.json").unlink()
    shutil.copytree(entry.path, entry.path.with_name("good.partial"))
    s2 = prepare_dataset(inp, tmp_path / "ds", cfg, whisper_path(base), landmarker_model=MEDIAPIPE, progress=False)
    assert s2["this_run"] == {"skipped (done before)": 4, "kept": 1}
    assert not entry.path.with_name("good.partial").exists() and ClipReader(entry.path).num_frames == 48
    # two workers split an input folder without overlap (silent clips: cheap to judge)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):
        (many / f"v{i}.mp4").symlink_to(DATA / "video" / "driving_a.mp4")
    s3 = prepare_dataset(many, tmp_path / "ds2", cfg, whisper_path(base), progress=False, worker_index=0, num_workers=2)
    s4 = prepare_dataset(many, tmp_path / "ds2", cfg, whisper_path(base), progress=False, worker_index=1, num_workers=2)
    n3, n4 = sum(s3["this_run"].values()), sum(s4["this_run"].values())
    assert n3 + n4 == 6 and n3 > 0 and n4 > 0 and s4["clips"] == 6


def test_prepared_clip_streams_from_disk(base):
    ds = headshot_dataset(base)
    entries = read_manifest(ds)
    assert [e.id for e in entries] == ["driving_a", "driving_b"] and all(e.num_frames == 48 for e in entries)
    assert len({e.path.parent.name for e in entries}) >= 1 and all(e.path.parent.name.startswith("shard-") for e in entries)
    r = ClipReader(entries[0].path)
    assert isinstance(r.array("whisper"), np.memmap) and isinstance(r.array("landmarks"), np.memmap)
    assert r.frame(5).shape == (128, 128, 3) and r.frames([0, 47]).shape == (2, 128, 128, 3)
    assert r.array("landmarks").shape == (48, 478, 3) and r.array("whisper").shape[1:] == (5, 384)
    assert len(r.array("audio16k")) == 32000  # 2 s at 16 kHz
    box = np.asarray(r.array("face_boxes"))
    assert 0.0 <= box.min() and box.max() <= 1.0 and bool((box[:, 2] > box[:, 0]).all())


def test_sampler_is_deterministic_resumable_and_rank_disjoint(base):
    cfg = _v1_cfg(base, "data.val_clips=0")  # both clips train (the held-out split: tests/test_trainer_conventions.py)
    p0, p1 = build_pools(cfg, 0, 2), build_pools(cfg, 1, 2)
    assert p0.by_kind["all"] == [0] and p1.by_kind["all"] == [1]
    s = ResumableSampler(cfg, build_pools(cfg))
    it = iter(s)
    keys = [next(it) for _ in range(10)]
    again = ResumableSampler(cfg, build_pools(cfg), start_pos=6)
    assert [next(iter(again)) for _ in range(1)][0] == keys[6]
    assert sorted(k["clip"] for k in keys[:2]) == [0, 1]  # one epoch visits each clip once
    ds = EchoDataset(cfg, build_pools(cfg))
    a, b = ds[keys[3]], ds[keys[3]]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["pixels"].shape == (1, 3, 64, 64) and a["cond"].shape == (3, 1, 64, 64) and a["audio"].shape == (1, 50, 384)


def test_random_landmark_selection_distribution():
    parts = ["eyes", "brows", "pupils", "nose", "mouth"]
    rng = np.random.default_rng(0)
    n = 4000
    kept = np.array([[p in rls_parts(rng, parts, 0.5) for p in parts] for _ in range(n)])
    drop = 1 - kept.mean(0)
    assert np.all(np.abs(drop - 0.5) < 0.04), drop  # each part dropped with p = 0.5
    both = ((~kept[:, 0]) & (~kept[:, 4])).mean()
    assert abs(both - 0.25) < 0.03  # independent parts
    none_kept, all_kept = (kept.sum(1) == 0).mean(), (kept.sum(1) == 5).mean()
    assert abs(none_kept - 1 / 32) < 0.012 and abs(all_kept - 1 / 32) < 0.012  # audio-only / landmarks-only samples
    rng = np.random.default_rng(1)
    drop2 = 1 - np.array([[p in rls_parts(rng, parts, 0.2) for p in parts] for _ in range(n)]).mean(0)
    assert np.all(np.abs(drop2 - 0.2) < 0.035)


def test_rls_pictures_in_samples(base):
    cfg = _v1_cfg(base)
    ds, s = EchoDataset(cfg, build_pools(cfg)), ResumableSampler(cfg, build_pools(cfg))
    samples = [ds[s.key(i)] for i in range(24)]
    masks = torch.stack([x["parts_mask"] for x in samples])
    assert 0 < int(masks.sum()) < masks.numel()  # parts are dropped in some samples, kept in others
    ink = torch.stack([x["cond"].sum() for x in samples])
    empty = masks.sum(1) == 0
    assert bool((ink[empty] == 0).all()) and bool((ink[~empty] > 0).all())  # dropping every part draws nothing


def test_audio_augmentation_plans_and_features(base):
    from echomimic_lib.audio import load_whisper_encoder

    cfg = _v1_cfg(base, "data.audio_aug.noise_prob=0.3", "data.audio_aug.gain_prob=0.5", "data.audio_aug.shift_prob=0.2")
    a = cfg.data.audio_aug
    rng = np.random.default_rng(0)
    plans = [draw_audio_aug(rng, a) for _ in range(3000)]
    freq = {k: np.mean([k in p for p in plans]) for k in ("noise_snr_db", "gain_db", "shift_samples")}
    assert abs(freq["noise_snr_db"] - 0.3) < 0.03 and abs(freq["gain_db"] - 0.5) < 0.03 and abs(freq["shift_samples"] - 0.2) < 0.03
    assert all(abs(p["shift_samples"]) <= 160 for p in plans if "shift_samples" in p)  # the preset's 10 ms at 16 kHz
    clip = ClipReader(read_manifest(headshot_dataset(base))[0].path)
    wave = np.asarray(clip.array("audio16k"))
    frames = np.arange(30, 34)  # speech starts at 0.75 s
    enc = load_whisper_encoder(whisper_path(base))
    plain = augmented_chunks(wave, frames, clip.fps, enc, {})
    stored = stored_chunks(clip.array("whisper"), len(wave), frames, clip.fps)
    assert torch.allclose(plain, stored, atol=2e-2, rtol=1e-2)  # same features as prepare (stored in float16)
    for plan in ({"noise_snr_db": 10.0, "noise_seed": 1}, {"gain_db": -6.0}, {"shift_samples": 640}):
        aug = augmented_chunks(wave, frames, clip.fps, enc, plan)
        assert aug.shape == plain.shape and float((aug - plain).abs().max()) > 1e-2, plan
    shifted = apply_audio_aug(wave, {"shift_samples": 320})
    assert np.array_equal(shifted[320:], wave[:-320]) and not shifted[:320].any()
    assert np.allclose(apply_audio_aug(wave, {"gain_db": 20 * np.log10(0.5)}), wave * 0.5, atol=1e-6)
    ds = EchoDataset(cfg, build_pools(cfg), whisper_path=str(whisper_path(base)))
    s = ResumableSampler(cfg, build_pools(cfg))
    flags = [bool(ds[s.key(i)]["audio_augmented"]) for i in range(12)]
    assert any(flags) and not all(flags)


def test_v1_audio_face_mask_samples_and_step(base):
    """The V1 audio weight set (1-channel face locator) trains on face-mask conditions."""
    from echomimic_lib.pipeline import make_scheduler
    from tests.test_trainer_helpers import tiny_weights
    from trainer.data.dataset import collate
    from trainer.init import build
    from trainer.step import LossFns, compute_losses

    cfg = _v1_cfg(base, "model.init=echomimic", f"model.echomimic_path={tiny_weights(base, 'v1')}", "model.weights=v1_audio",
                  "data.condition=face_mask", "loss.spatial.lpips=0")
    pools = build_pools(cfg)
    ds, s = EchoDataset(cfg, pools), ResumableSampler(cfg, pools)
    x = ds[s.key(0)]
    assert x["cond"].shape == (1, 1, 64, 64) and 0.1 < float(x["cond"].mean()) < 0.9  # dilated face box, not the whole frame
    built = build(cfg)
    assert built.net.cond_encoder.in_channels == 1
    out = compute_losses(built.net, built.vae, make_scheduler(), collate([x, ds[s.key(1)]]), torch.Generator().manual_seed(0), cfg, LossFns())
    out.total.backward()
    assert torch.isfinite(out.total) and built.net.cond_encoder.conv_in.weight.grad is not None
