"""Training conventions made deliberate (#26): the training noise schedule and the held-out validation split."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError
from trainer.config_file import load_config
from trainer.data.split import SplitError, clip_group, split_entries
from trainer.data.store import ClipEntry

ROOT = Path(__file__).resolve().parents[1]


def _cfg(*over):
    return load_config(None, ["model.init=random", "model.arch=tiny", *over], preset="v1_stage1")


# ------------------------------------------------------------------------------------------------ noise schedule
def test_the_beta_schedule_key_sets_the_training_schedulers_betas():
    from trainer.losses import training_scheduler

    sl = training_scheduler(_cfg("noise.beta_schedule=scaled_linear"))
    li = training_scheduler(_cfg("noise.beta_schedule=linear"))
    raw = _cfg("noise.beta_schedule=linear", "noise.rescale_betas_zero_snr=false")
    n = 1000
    expected_linear = torch.linspace(0.00085, 0.012, n, dtype=torch.float32)
    assert torch.allclose(training_scheduler(raw).betas, expected_linear)  # plain linear betas without the rescale
    raw.noise.beta_schedule = "scaled_linear"
    expected_scaled = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float32) ** 2
    assert torch.allclose(training_scheduler(raw).betas, expected_scaled)
    for s in (sl, li):  # zero terminal SNR either way, and v-prediction
        assert float(s.alphas_cumprod[-1]) == 0.0 and s.config.prediction_type == "v_prediction"
    # the two schedules agree at both ends and differ in between: scaled_linear is less noisy from t = 10 on
    a, b = sl.alphas_cumprod.double(), li.alphas_cumprod.double()
    assert torch.isclose(a[0], b[0]) and (a[10:-1] > b[10:-1]).all()
    assert abs(float(a[500]) - 0.2410) < 1e-3 and abs(float(b[500]) - 0.1415) < 1e-3  # the figures of docs/training.md


def test_the_default_training_schedule_is_the_documented_one():
    from trainer.losses import training_scheduler

    cfg = _cfg()
    assert (cfg.noise.beta_schedule, cfg.noise.beta_start, cfg.noise.beta_end) == ("scaled_linear", 0.00085, 0.012)
    s = training_scheduler(cfg)
    assert s.config.beta_schedule == "scaled_linear" and s.config.rescale_betas_zero_snr and s.config.prediction_type == "v_prediction"
    doc = (ROOT / "docs" / "training.md").read_text()
    section = doc[doc.index("### Noise schedule"):]
    assert re.search(r"default[^.]*`scaled_linear`", section[:3000])
    assert "train_stage_1.py" in section and "inference_v2.yaml" in section  # the sources


def test_a_bad_noise_setting_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"noise.beta_schedule: 'cosine'.*scaled_linear.*linear"):
        _cfg("noise.beta_schedule=cosine")
    with pytest.raises(ConfigError, match="noise.prediction_type: 'epsilon'.*set v_prediction"):
        _cfg("noise.prediction_type=epsilon")
    with pytest.raises(ConfigError, match="noise.beta_start/beta_end"):
        _cfg("noise.beta_start=0.02")
    with pytest.raises(ConfigError, match="noise_scheduler.beta_schedule: set it as noise.beta_schedule"):
        _cfg("noise_scheduler={beta_schedule: linear}")
    with pytest.raises(ConfigError, match="noise.beta_shedule: unknown key; did you mean 'beta_schedule'"):
        _cfg("noise.beta_shedule=linear")


# ------------------------------------------------------------------------------------------------ held-out split
def _entries(ids, kind="headshot", groups=None):
    return [ClipEntry(i, Path("/x") / i, 0, 48, 24.0, kind, (groups or {}).get(i, "")) for i in ids]


def test_the_split_holds_out_whole_identities_deterministically():
    ids = [f"spk{s}__clip{c}" for s in range(6) for c in range(3)] + ["loose_a", "loose_b"]
    entries = _entries(ids)
    sp = split_entries(entries, 4, True, seed=7)
    assert set(sp.train).isdisjoint(sp.val) and sorted(sp.train + sp.val) == list(range(len(ids)))
    assert len(sp.val) >= 4
    held_groups = {clip_group(entries[i]) for i in sp.val}
    for i in sp.train:  # no identity on both sides
        assert clip_group(entries[i]) not in held_groups
    assert split_entries(entries, 4, True, seed=7) == sp  # the same data and seed: the same split
    assert split_entries(list(reversed(entries)), 4, True, seed=7).groups == sp.groups  # independent of listing order
    seeds = {tuple(split_entries(entries, 1, True, seed=s).groups) for s in range(20)}
    assert len(seeds) > 1  # the seed chooses which identity
    # a manifest 'group' (speaker id) joins clips from different folders
    g = _entries(["a__1", "b__1", "c__1"], groups={"a__1": "ann", "b__1": "ann"})
    sp = split_entries(g, 1, True, seed=0)
    assert {g[i].id for i in sp.val} in ({"a__1", "b__1"}, {"c__1"})
    # default: one group only when validation is on
    assert split_entries(entries, None, False).val == [] and split_entries(entries, None, True).val


def test_the_split_refuses_or_falls_back_when_too_small():
    one = _entries(["spk__a", "spk__b"])  # one identity: nothing can be held out
    sp = split_entries(one, None, True)
    assert sp.val == [] and sp.train == [0, 1] and "leaves no headshot clip to train on" in sp.fallback
    with pytest.raises(SplitError, match="leaves no headshot clip to train on.*data.val_clips: 0"):
        split_entries(one, 1, True)
    with pytest.raises(SplitError, match="validation.clip: no clip 'nope'"):
        split_entries(_entries(["a", "b"]), None, True, named_clip="nope")
    sp = split_entries(_entries(["a", "b", "c"]), None, True, named_clip="b")
    assert sp.val == [1]  # the named clip's group is the held-out one
    # V2: only half-body clips can be rendered by validation, so only they are held out
    mixed = _entries(["h1", "h2"], "headshot") + _entries(["b1", "b2"], "halfbody")
    sp = split_entries(mixed, None, True, condition="pose")
    assert [mixed[i].kind for i in sp.val] == ["halfbody"]
    # ... and never the last one: other kinds still training does not make up for no half-body clip
    sp = split_entries(_entries(["h1", "h2"], "headshot") + _entries(["b1"], "halfbody"), None, True, condition="pose")
    assert sp.val == [] and "leaves no halfbody clip" in sp.fallback


def test_training_never_reads_the_held_out_clip_and_validation_draws_it(tmp_path):
    import json

    from trainer.data.dataset import ResumableSampler, build_pools

    root = tmp_path / "ds"
    root.mkdir()
    rows = [{"id": f"spk{s}__c{c}", "path": f"shard-00000/spk{s}__c{c}", "shard": 0, "num_frames": 48, "fps": 24.0, "kind": "headshot"}
            for s in range(3) for c in range(2)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:  # the clips' folders (build_pools refuses a manifest's clip whose folder is gone); only names matter here
        (root / r["path"]).mkdir(parents=True)
        for name in ("clip.json", "whisper.npy"):
            (root / r["path"] / name).write_text("{}")
    cfg = _cfg(f"data.roots=[{root}]", "validation.every=5", "optim.batch_size=1")
    pools = build_pools(cfg)
    held = {pools.entries[i].id for i in pools.val}
    assert len(held) == 2 and len({h.split("__")[0] for h in held}) == 1  # one speaker's two clips
    sampler = ResumableSampler(cfg, pools)
    seen = {pools.entries[sampler.key(p)["clip"]].id for p in range(200)}
    assert seen.isdisjoint(held) and len(seen) == 4
    assert pools.validation_entry(None, "landmarks").id in held and not pools.split_note
    for world in (2, 3):  # every rank reads training clips only
        for rank in range(world):
            assert set(build_pools(cfg, rank, world).by_kind["all"]).isdisjoint(pools.val)
    cfg.data.val_clips = 0
    assert build_pools(cfg).val == [] and build_pools(cfg).split_note  # validation on a training clip, said so
