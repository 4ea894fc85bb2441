"""Small leftovers: a negative seed at the V1/V2 Sampler (-1 was taken as 2^64-1 by torch's generator, not "random",
though the message said 0 to 2^64-1), a linked Face Track reference_frame that is not whole (2.5 was frame 2) or
negative other than -1 (-5 was "auto"), and a training manifest whose clip path leaves its dataset folder."""
from __future__ import annotations

import json
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.pipeline.settings import settings_for
from tests._pack import sub


# ------------------------------------------------------------------------------------------ V1/V2 Sampler: seed
@pytest.mark.parametrize("seed", [-1, -2**63, 2**64, 1.5, float("nan"), True, "7"])
def test_sample_settings_refuse_a_seed_outside_0_to_2_64(seed):
    with pytest.raises(EchoMimicError, match=r"seed .*: use a whole number from 0 to 2\^64-1"):
        settings_for("v1-audio", seed=seed).validate()


@pytest.mark.parametrize("seed, kept", [(0, 0), (2**64 - 1, 2**64 - 1), (7.0, 7)])
def test_sample_settings_take_the_range_and_a_whole_float(seed, kept):
    s = settings_for("v1-audio", seed=seed)
    s.validate()
    assert s.seed == kept and type(s.seed) is int


@pytest.fixture
def no_sampling(monkeypatch):
    sampler = sub("nodes.sampler")
    monkeypatch.setattr(sampler, "placement", lambda *a, **k: pytest.fail("models placed before the seed was checked"))
    monkeypatch.setattr(sampler, "build_condition", lambda *a, **k: pytest.fail("a condition built before the seed was checked"))
    return sampler


@pytest.mark.parametrize("seed", [-1, -5])
def test_the_v1_v2_sampler_node_refuses_a_negative_seed_before_any_work(seed, no_sampling):
    err = sub("echomimic_lib.errors").EchoMimicError
    handle = SimpleNamespace(models=SimpleNamespace(), low_vram=False, weights="v1_audio", variant="normal")
    track = SimpleNamespace(frame_count=12, fps=24.0, audio=None, features=None)
    with pytest.raises(err, match=rf"seed {seed}: use a whole number from 0 to 2\^64-1.*not .random. here.*randomize"):
        no_sampling.sample(handle, torch.zeros(1, 64, 64, 3), track, seed, 1, 0.0, 64, 64, 0, 12, 3)


def test_the_sampler_seed_tooltips_say_the_range_and_how_to_randomize():
    for name, node in (("nodes.sampler", "EchoMimicSampler"), ("nodes.v3", "EchoMimicV3Sampler")):
        spec = getattr(sub(name), node).INPUT_TYPES()["required"]["seed"][1]
        assert spec["min"] == 0 and "randomize" in spec["tooltip"], (node, spec)


# ------------------------------------------------------------------------------------------ Face Track: reference_frame
def _track(monkeypatch, reference_frame):
    face_track = sub("nodes.face_track")
    seen = []

    @contextmanager
    def landmarker(download):
        yield None

    def plan_dub(frames, fps, n_model, model_fps, n_out, size, retime, ref, **kw):
        seen.append(ref)
        raise RuntimeError("planned")

    monkeypatch.setattr(face_track.detectors, "face_landmarker", landmarker)
    monkeypatch.setattr(face_track, "plan_dub", plan_dub)
    features = SimpleNamespace(features=SimpleNamespace(seconds=1.0), fps=25.0, frame_count=25)
    with pytest.raises(RuntimeError, match="planned"):
        face_track.track(torch.rand(10, 64, 64, 3), 25.0, features, 64, 64, reference_frame, "", "ping-pong", False)
    return seen[0]


@pytest.mark.parametrize("given, passed", [(-1, None), (-1.0, None), (0, 0), (2, 2), (2.0, 2)])
def test_face_track_takes_minus_1_as_auto_and_whole_frame_numbers(monkeypatch, given, passed):
    got = _track(monkeypatch, given)
    assert got == passed and (got is None or type(got) is int)


@pytest.mark.parametrize("bad", [2.5, -5, -2, -1.5, float("nan"), float("inf"), True, "2"])
def test_face_track_refuses_a_reference_frame_that_is_not_whole_or_below_minus_1(monkeypatch, bad):
    face_track = sub("nodes.face_track")
    monkeypatch.setattr(face_track.detectors, "face_landmarker",
                        lambda *a, **k: pytest.fail("MediaPipe was opened before reference_frame was checked"))
    with pytest.raises(sub("echomimic_lib.errors").EchoMimicError,
                       match=rf"reference_frame {bad!r}: give a whole frame number .*0 = the first frame.* or -1 "):
        face_track.track(torch.rand(10, 64, 64, 3), 25.0, None, 64, 64, bad, "", "ping-pong", False)


# ------------------------------------------------------------------------------------------ trainer manifest paths
def _dataset(tmp_path, *paths):
    root = tmp_path / "ds"
    (root / "shard-00000" / "good").mkdir(parents=True)
    rows = [{"id": f"c{i}", "path": p, "shard": 0, "num_frames": 10, "fps": 25.0} for i, p in enumerate(paths)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("bad", ["/etc", "../outside", "shard-00000/../../outside", "shard-00000/good/../../../x"])
def test_read_manifest_refuses_a_clip_path_that_leaves_the_dataset_folder(tmp_path, bad):
    from trainer.config import ConfigError
    from trainer.data.store import read_manifest

    root = _dataset(tmp_path, "shard-00000/good", bad)
    with pytest.raises(ConfigError) as err:
        read_manifest(root)
    text = str(err.value)
    assert f"manifest.jsonl line 2 (clip c1): path {bad!r}" in text and "inside the dataset folder" in text, text
    assert "echomimic-train prepare" in text, text


@pytest.mark.parametrize("rel, link", [("shard-00000/linked", "shard-00000/linked"), ("shard-00001/c", "shard-00001")])
def test_read_manifest_refuses_a_clip_or_shard_folder_linked_from_outside(tmp_path, rel, link):
    from trainer.config import ConfigError
    from trainer.data.store import read_manifest

    outside = tmp_path / "private"
    (outside / "c").mkdir(parents=True)
    root = _dataset(tmp_path, "shard-00000/good", rel)
    (root / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigError, match=rf"line 2 \(clip c1\): '{rel}' leads through a link to .*private.*outside"):
        read_manifest(root)


def test_read_manifest_takes_clip_paths_inside_and_a_linked_dataset_folder(tmp_path):
    from trainer.data.store import read_manifest

    root = _dataset(tmp_path, "shard-00000/good", "shard-00000/./good")
    link = tmp_path / "ds-link"
    link.symlink_to(root, target_is_directory=True)  # the dataset folder itself may be a link (another disk)
    for r in (root, link):
        entries = read_manifest(r)
        assert [e.id for e in entries] == ["c0", "c1"] and entries[0].path == r / "shard-00000" / "good"


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_training_config_refuses_a_validation_seed_the_sampler_would_refuse_mid_run(seed):
    """The V1/V2 validation render goes through SampleSettings.validate: a -1 there failed at the first checkpoint."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    with pytest.raises(ConfigError, match=rf"validation.seed: {seed} must be a whole number from 0 to 2\^64-1"):
        load_config(None, ["model.init=random", "model.arch=tiny", f"validation.seed={seed}"], preset="v1_stage1")
    assert load_config(None, ["model.init=random", "validation.seed=7"], preset="v1_stage1").validation.seed == 7
