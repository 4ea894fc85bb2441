"""`echomimic animate --version v3-flash` and `echomimic make-tiny --version v3-flash` end to end (tiny weights)."""
from __future__ import annotations

from pathlib import Path

import av

from echomimic_lib.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_make_tiny_v3_then_animate(tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["make-tiny", str(models / "v3-flash"), "--version", "v3-flash"]) == 0
    out = tmp_path / "v3.mp4"
    rc = main(["animate", "--version", "v3-flash", "--reference", str(DATA / "images" / "portrait_a.png"),
               "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(models),
               "--width", "64", "--height", "64", "--steps", "2", "--length", "9", "--prompt", "a man is speaking .",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert c.streams.audio and v.codec_context.width % 16 == 0
        assert sum(1 for _ in c.decode(video=0)) == 9
    assert list((models / "v3-flash" / "prompt_cache").glob("*.safetensors"))  # the umT5 states are cached


def test_v3_errors_before_work(tmp_path, capsys):
    rc = main(["animate", "--version", "v3-flash", "--reference", str(DATA / "images" / "portrait_a.png"),
               "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(tmp_path / "x.mp4"), "--models", str(tmp_path),
               "--offline"])  # without it the missing files are fetched (tests/test_v3_download.py)
    assert rc == 2 and "flash-pro files missing" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()
    rc = main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(DATA / "images" / "portrait_a.png"),
               "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(tmp_path / "x.mp4"), "--cfg", "2"])
    assert rc == 2 and "--audio-cfg" in capsys.readouterr().err
    rc = main(["animate", "--version", "v3-flash", "--mode", "halfbody", "--reference", "x.png", "--audio", "y.wav", "-o",
               str(tmp_path / "x.mp4")])
    assert rc == 2 and "--mode is a V1/V2 option" in capsys.readouterr().err


def test_the_other_familys_options_are_refused_by_name_not_ignored(tmp_path, capsys):
    """V1/V2-only options with --version v3-flash, and V3-only options without it, stop the run before any file is read
    (the inputs here do not exist: a check that came later would name them instead)."""
    base = ["animate", "--reference", str(tmp_path / "none.png"), "--audio", str(tmp_path / "none.wav"),
            "-o", str(tmp_path / "x.mp4"), "--models", str(tmp_path), "--offline"]
    for extra, said in ((["--low-vram"], "--low-vram is a V1/V2 option"),
                        (["--halfbody-crop", "--align-poses"], "--halfbody-crop and --align-poses are V1/V2 options"),
                        (["--parts", "eyes"], "--parts is a V1/V2 option"),
                        (["--fps", "30"], "--fps is a V1/V2 option"),
                        (["--context-frames", "16"], "--context-frames is a V1/V2 option")):
        assert main(base + ["--version", "v3-flash"] + extra) == 2
        assert said in capsys.readouterr().err, extra
    for extra, said in ((["--prompt", "a man talks"], "--prompt is an EchoMimicV3 flash-pro option"),
                        (["--version", "v2", "--audio-cfg", "4", "--teacache", "off"], "--audio-cfg and --teacache are EchoMimicV3")):
        assert main(base + extra) == 2
        assert said in capsys.readouterr().err, extra
    # V3's own frame rate said explicitly is no V1/V2 option: the run goes on to the next check (the missing input)
    assert main(base + ["--version", "v3-flash", "--fps", "25"]) == 2
    err = capsys.readouterr().err
    assert "V1/V2 option" not in err and "none.png" in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_one_frame_v3_clip_renders(tmp_path, capsys):
    """--length 1 (or 40 ms of speech): one latent frame, no later audio frames for the projector."""
    out = tmp_path / "one.mp4"
    rc = main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(DATA / "images" / "portrait_a.png"),
               "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "m"),
               "--length", "1", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 1


def test_the_prompt_cache_keeps_each_precision_apart(tmp_path, monkeypatch):
    """A bf16 run does not get the fp32 states cached by an earlier fp32 run (nor the other way): the cache is keyed by
    the encoder's dtype too, and each precision loads umT5 once."""
    import torch

    from echomimic_lib.jobs.animate_v3 import encode_prompts
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from echomimic_lib.pipeline.wan import encoders

    folder = write_tiny_v3(tmp_path / "tiny")
    loads, real = [], encoders.load_umt5
    monkeypatch.setattr(encoders, "load_umt5", lambda *a, **k: loads.append(k.get("dtype", a[2] if len(a) > 2 else None))
                        or real(*a, **k))
    cache = tmp_path / "prompt_cache"
    args = (folder / "umt5-xxl", ["a woman speaks ."], cache, "cpu")
    fp32 = encode_prompts(*args, torch.float32)
    assert list(fp32) == ["a woman speaks ."] and encode_prompts(*args, torch.float32) == {}
    bf16 = encode_prompts(*args, torch.bfloat16)
    assert list(bf16) == ["a woman speaks ."] and encode_prompts(*args, torch.bfloat16) == {}
    assert loads == [torch.float32, torch.bfloat16] and len(list(cache.glob("*.safetensors"))) == 2
    assert not torch.equal(fp32["a woman speaks ."], bf16["a woman speaks ."])  # the precisions' states differ


def test_long_mode_reaches_the_chunked_render_and_is_a_v3_option(tmp_path, capsys, monkeypatch):
    """--long-mode continue reaches the chunking of a clip longer than 81 frames (the chunk loop is stubbed: its own
    tests are in test_v3_long.py); V1/V2 refuse it by name."""
    import numpy as np

    from echomimic_lib.pipeline.wan import long

    seen = {}

    def fake_iter_long(model, vae, enc, ref_u8, prompt, clip, samples, total, settings, mode="reanchor", **kw):
        seen["mode"] = mode
        yield np.zeros((total,) + ref_u8.shape, np.uint8)

    monkeypatch.setattr(long, "iter_long", fake_iter_long)
    out = tmp_path / "long.mp4"
    rc = main(["animate", "--version", "v3-flash", "--smoke", "--reference", str(DATA / "images" / "portrait_a.png"),
               "--audio", str(DATA / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(tmp_path / "m"),
               "--length", "89", "--long-mode", "continue", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert seen == {"mode": "continue"} and out.is_file()
    rc = main(["animate", "--reference", str(tmp_path / "none.png"), "--audio", str(tmp_path / "none.wav"),
               "-o", str(tmp_path / "x.mp4"), "--long-mode", "continue"])
    assert rc == 2 and "--long-mode is an EchoMimicV3 flash-pro option" in capsys.readouterr().err
