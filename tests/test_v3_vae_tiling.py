"""``--vae-tiling`` for EchoMimicV3 flash-pro: diffusers' spatial tiling of the Wan VAE, opt-in, per request (a batch
worker's shared VAE follows each row), refused for V1/V2, and a batch column that leaves old rows' fingerprints."""
from __future__ import annotations

import dataclasses
import json

import torch

from echomimic_lib.cli import main
from tests.test_v3_lora_run import REF, WAV, _smoke, tiny_set  # noqa: F401 (fixture)


def test_tiled_encode_and_decode_stay_close_to_the_whole_frame_pass(tiny_set):  # noqa: F811
    from echomimic_lib.models.wan.vae import decode, encode_mode, load_wan_vae, set_tiling

    vae = load_wan_vae(tiny_set["folder"] / "vae")
    g = torch.Generator().manual_seed(0)
    small = torch.rand(1, 3, 10, 10, generator=g)  # a smooth 320-px frame: two tiles a side (256 px, stride 192)
    video = torch.nn.functional.interpolate(small, size=(320, 320), mode="bilinear").view(1, 3, 1, 320, 320) * 2 - 1
    set_tiling(vae, False)
    whole = decode(vae, encode_mode(vae, video))
    set_tiling(vae, True)
    tiled = decode(vae, encode_mode(vae, video))
    set_tiling(vae, False)
    assert not vae.use_tiling and tiled.shape == whole.shape and torch.isfinite(tiled).all()
    diff = (tiled - whole).abs()
    assert diff.max() > 0  # the tiles were used
    assert diff.mean() < 0.05, float(diff.mean())  # in [-1, 1]; tiny random weights (0.011 at 384 px, 9 frames)


def test_the_flag_reaches_the_vae_per_request_and_is_off_by_default(tiny_set, tmp_path, monkeypatch, capsys):  # noqa: F811
    import echomimic_lib.models.wan.vae as wan_vae

    seen, real = [], wan_vae.set_tiling
    monkeypatch.setattr(wan_vae, "set_tiling", lambda vae, on: seen.append(on) or real(vae, on))
    assert _smoke(tiny_set, tmp_path / "plain.mp4") == 0, capsys.readouterr().err
    assert _smoke(tiny_set, tmp_path / "tiled.mp4", "--vae-tiling") == 0, capsys.readouterr().err
    assert seen == [False, True]
    assert (tmp_path / "tiled.mp4").is_file()


def test_v1_v2_refuse_the_v3_option(tmp_path, capsys):
    rc = main(["animate", "--reference", str(REF), "--audio", str(WAV), "-o", str(tmp_path / "x.mp4"), "--vae-tiling",
               "--models", str(tmp_path)])
    assert rc == 2 and "--vae-tiling is an EchoMimicV3" in capsys.readouterr().err


def test_a_batch_column_with_old_rows_fingerprints_unchanged(tiny_set, tmp_path, monkeypatch):  # noqa: F811
    from echomimic_lib.jobs.batch import results
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    (tmp_path / "ref.png").write_bytes(REF.read_bytes())
    (tmp_path / "s.wav").write_bytes(WAV.read_bytes())
    row = {"version": "v3-flash", "reference": "ref.png", "audio": "s.wav", "smoke": True, "models": str(tiny_set["models"])}
    (tmp_path / "m.jsonl").write_text(json.dumps(dict(row, name="plain")) + "\n"
                                      + json.dumps(dict(row, name="tiled", **{"vae-tiling": True})) + "\n")
    jobs = {j.name: j for j in check_jobs(read_manifest(tmp_path / "m.jsonl", tmp_path / "out"))}
    plain, tiled = jobs["plain"], jobs["tiled"]
    assert tiled.error is None and tiled.request.vae_tiling is True and tiled.request.request("cpu", torch.float32).vae_tiling
    assert tiled.weight_key == plain.weight_key  # one loaded set serves both
    now = results.fingerprint(plain)
    old = {k: v for k, v in dataclasses.asdict(plain.request).items() if k not in ("vae_tiling", "fp8")}  # before both
    monkeypatch.setattr(results, "asdict", lambda request: dict(old))
    assert results.fingerprint(plain) == now
    monkeypatch.undo()
    assert results.fingerprint(tiled) != now
