"""EchoMimicV3 flash-pro: the mistakes a new user makes, each refused with the problem and its fix before any model
loads or expensive work (files of the wrong family, a V3 LoRA given to V1/V2, hours of speech), and the V3 Sampler's
host-memory check measured against what the node really holds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from echomimic_lib.errors import EchoMimicError, WeightsError
from tests.test_sampler_host_memory import FIXED_MALLOC

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- model folder mistakes
@pytest.fixture()
def release(tmp_path):
    from tests._v3_tiny import tiny_model, write_release

    base, v3, sd = write_release(tiny_model(), tmp_path / "rel", v3_keys="audio")
    return base, v3, sd


def _base_folder(tmp_path, name, weights: dict, config: dict | str | None) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def test_a_foreign_or_half_downloaded_base_folder_is_named_with_the_fix(release, tmp_path):
    """An SD1.5 / V1-V2 file where the Wan base belongs (no config.json), a Wan text-to-video config and a cut
    config.json were a KeyError, a ValueError and a JSONDecodeError traceback."""
    from echomimic_lib.models.wan import load_v3_transformer
    from echomimic_lib.models.wan.loader import is_audio_key

    base, v3, sd = release
    sd15 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}
    with pytest.raises(WeightsError, match=r"the base file has no 'patch_embedding.weight': not a Wan 2.1 transformer \(an "
                                           r"SD1.5 or EchoMimic V1/V2 file\?\).*echomimic download --weights v3-flash"):
        load_v3_transformer(_base_folder(tmp_path, "sd15", sd15, None), v3)
    cfg = json.loads((base / "config.json").read_text())
    t2v = {k: v for k, v in sd.items() if not is_audio_key(k)}
    with pytest.raises(WeightsError, match=r"config says 't2v'.*must be Wan2.1-Fun-V1.1-1.3B-InP \(image-to-video"):
        load_v3_transformer(_base_folder(tmp_path, "t2v", t2v, {**cfg, "model_type": "t2v"}), v3)
    cut = json.dumps(cfg)[:25]
    with pytest.raises(WeightsError, match=r"config.json: not a readable config.json .*Download it again"):
        load_v3_transformer(_base_folder(tmp_path, "cut", t2v, cut), v3)
    with pytest.raises(WeightsError, match=r"not a model config"):
        load_v3_transformer(_base_folder(tmp_path, "list", t2v, "[1, 2]"), v3)
    assert load_v3_transformer(base, v3)[0] is not None  # the release itself still loads


def test_a_v1_v2_file_as_the_v3_file_names_the_download(release, tmp_path):
    from echomimic_lib.models.wan import load_v3_transformer

    base, _, _ = release
    unet = tmp_path / "denoising_unet.pth"
    torch.save({"conv_in.weight": torch.zeros(8, 4, 3, 3)}, unet)
    with pytest.raises(WeightsError, match=r"not an EchoMimicV3 flash-pro transformer.*V1/V2 file has neither.*"
                                           r"echomimic download --weights v3-flash"):
        load_v3_transformer(base, unet)


# --------------------------------------------------------------------------------------------------- LoRA mix-ups
@pytest.mark.parametrize("layout", ["comfyui", "kohya", "diffusers", "v3-export"])
def test_a_wan_or_v3_lora_given_to_v1_v2_says_where_it_belongs(tmp_path, layout):
    """Was "not an EchoMimic LoRA ... (LoRAs for other models, e.g. SD1.5, do not fit)" -- also for the user's own
    ``echomimic-train v3-export`` file."""
    from echomimic_lib.lora.files import read_lora

    key = {"comfyui": "diffusion_model.blocks.0.self_attn.q", "kohya": "lora_unet_blocks_0_cross_attn_k",
           "diffusers": "transformer.blocks.0.attn1.to_q", "v3-export": "diffusion_model.blocks.3.ffn.0"}[layout]
    meta = {"format": "echomimic-v3-lora", "rank": "4"} if layout == "v3-export" else None
    path = tmp_path / f"{layout}.safetensors"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 32), f"{key}.lora_B.weight": torch.zeros(32, 4)}, str(path), metadata=meta)
    with pytest.raises(WeightsError, match=r"a Wan2.1 / EchoMimicV3 LoRA, not an EchoMimic V1/V2 adapter.*--version v3-flash "
                                           r"--lora \(ComfyUI: the EchoMimic V3 LoRA node\)"):
        read_lora(path)


def test_an_sd15_lora_still_gets_the_v1_v2_message(tmp_path):
    from echomimic_lib.lora.files import read_lora

    path = tmp_path / "sd.safetensors"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.zeros(4, 32), f"{key}.lora_up.weight": torch.zeros(32, 4)}, str(path))
    with pytest.raises(WeightsError, match=r"not an EchoMimic LoRA .*e.g. SD1.5, do not fit"):
        read_lora(path)


# ------------------------------------------------------------------------------------------------- hours of speech
DATA = ROOT.parent / "shared" / "data"


def test_speech_longer_than_a_v3_video_can_be_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    """V3 read the whole file whatever its length (loudness is measured over the whole clip): hours of speech were
    gigabytes of samples before the 81 frames it renders. Now the header refuses it before decoding (1.5 times over
    the bound: a header may estimate), the decoded length exactly, and nothing is written."""
    import echomimic_lib.io.audio_file as audio_file
    from echomimic_lib.jobs import speech_length
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3
    from tests._media import write_wav

    wav = write_wav(tmp_path / "talk.wav", 0.3 * np.sin(2 * np.pi * 200 * np.arange(32000) / 16000))  # 2 s: 50 frames
    decoded = []
    real = audio_file.read_audio
    monkeypatch.setattr(audio_file, "read_audio", lambda p, *a, **k: decoded.append(p) or real(p, *a, **k))
    out = tmp_path / "out.mp4"

    def plan(length=0):
        return plan_v3(V3Request(reference=str(DATA / "images" / "portrait_a.png"), audio=str(wav), output=str(out),
                                 models=str(tmp_path), size=(64, 64), length=length))

    monkeypatch.setattr(speech_length, "MAX_LENGTH", 30)
    for length in (0, 25):  # --length does not shorten what V3 reads
        with pytest.raises(EchoMimicError, match=r"talk.wav lasts 0 min, longer than an EchoMimicV3 video can be \(30 frames"
                                                 r".*--length does not shorten what is read: cut the speech"):
            plan(length)
    assert decoded == [] and not out.exists()  # 1.67 times over: said from the header
    monkeypatch.setattr(speech_length, "MAX_LENGTH", 40)  # 1.25 times over: decoded, then refused on the exact length
    with pytest.raises(EchoMimicError, match=r"longer than an EchoMimicV3 video can be \(40 frames"):
        plan()
    assert decoded == [wav]
    monkeypatch.setattr(speech_length, "MAX_LENGTH", 50)
    assert plan().frames == 49  # within the bound: as before


# ------------------------------------------------------------------------------------- the V3 Sampler's host memory
_MEASURE = r'''
import gc, json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np, psutil, torch
from tests._pack import load_pack, sub
from echomimic_lib.models.wan.tiny import CLIP_DIM, TEXT_DIM, write_tiny_v3
from echomimic_lib.models.wan.vae import DiffusersPixelVAE, load_wan_vae
from echomimic_lib.pipeline.wan.color import color_transfer

tmp, frames, side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
load_pack()
bridge, v3, payloads = sub("nodes.comfy_bridge"), sub("nodes.v3"), sub("nodes.payloads")
bridge.MODELS_DIR = tmp / "models"
folder = write_tiny_v3(bridge.MODELS_DIR / "echomimic" / "v3-flash")
(handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
sampler, long = sub("echomimic_lib.pipeline.wan.sampler"), sub("echomimic_lib.pipeline.wan.long")
keep = []  # a copy of each block, for the comparison run only


def chunk(n, k):  # what a chunk costs the host: its decoded float32 video (ComfyUI's VAE: on the CPU), to_frames, colour
    video = torch.rand(1, 3, n, side, side, generator=torch.Generator().manual_seed(k))
    return color_transfer(sampler.to_frames(video))


def fake_generate(*a, **k):
    block = chunk(frames, 0)
    keep.extend([block.copy()] if KEEP else [])
    return SimpleNamespace(frames=block)


def fake_long(*a, **k):
    for i, n in enumerate(long.chunk_sizes(frames, 81, 8)):
        block = chunk(81, i)[:n]
        keep.extend([block.copy()] if KEEP else [])
        yield block


sampler.generate, long.iter_long = fake_generate, fake_long
free = {"bytes": 1 << 50}
psutil.virtual_memory = lambda: SimpleNamespace(available=free["bytes"])
g = torch.Generator().manual_seed(0)
positive = [[torch.randn(1, 8, TEXT_DIM, generator=g), {}]]
clip = SimpleNamespace(penultimate_hidden_states=torch.randn(1, 257, CLIP_DIM, generator=g))
vae = DiffusersPixelVAE(load_wan_vae(folder / "vae"))
image = torch.rand(1, side, side, 3, generator=g)
audio = v3.V3Audio(np.zeros(16000, np.float32), frames, {"waveform": torch.zeros(1, 1, 640 * frames + 1), "sample_rate": 16000})


def run():
    return v3.EchoMimicV3Sampler().execute(handle, audio, positive, clip, vae, image, side, 1, 1.0, 0, "off", True)[0]


def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024


KEEP = False
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from here
base = status("VmRSS")
out = run()
peak = status("VmHWM") - base
n = int(out.shape[0])
del out
free["bytes"] = peak - 1  # less free than the run really took
try:
    run()
    refused = ""
except Exception as exc:
    refused = str(exc)
free["bytes"], KEEP = 1 << 50, True
same = bool(torch.equal(run(), payloads.to_image(np.concatenate(keep))))
print(json.dumps({"peak": peak, "frames": n, "refused": refused, "same": same}))
'''


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux: the peak resident memory is measured")
@pytest.mark.parametrize("frames", [81, 233])
def test_the_v3_samplers_memory_check_covers_what_the_node_really_holds(tmp_path, frames):
    """The V3 Sampler held every uint8 block, their concatenation and the float32 IMAGE at once (6 bytes a value; the
    check counted the 4 of the IMAGE, nothing for the chunk being decoded). Measured in a process of its own: the peak
    resident memory over the node's run (each chunk as the decode makes it: float32 video on the host, to_frames,
    colour transfer). A machine with less free memory than that is now refused up front; the frames are those
    to_image gave the concatenated blocks, bit for bit."""
    side = 320
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    got = subprocess.run([sys.executable, str(script), str(tmp_path), str(frames), str(side)], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **FIXED_MALLOC}, capture_output=True, text=True,
                         timeout=300)  # (FIXED_MALLOC: the high-water mark is what the run holds, not the allocator's)
    assert got.returncode == 0, got.stderr[-3000:]
    ran = json.loads(got.stdout.strip().splitlines()[-1])
    assert ran["frames"] == frames and ran["same"] is True
    peak = ran["peak"]
    assert peak > frames * side * side * 3 * 4  # the IMAGE itself is in the measure
    assert "host memory" in ran["refused"] and "EchoMimic V3 Sampler (to file)" in ran["refused"], ran
    need = float(ran["refused"].split("need about ")[1].split(" ")[0]) * 1e6  # the check's figure (MB)
    assert need <= 2 * peak  # and no wild over-estimate (a one-shot clip's IMAGE is not yet written while it is decoded)


# ---------------------------------------------------------------------------------------------------- huge sizes
def test_a_target_area_over_2048_px_a_side_is_refused_before_any_file_is_read(tmp_path, capsys):
    """A large photo with --width/--height at its own size rendered at that size (the reference is never enlarged, but
    never capped either): tens of GB of activations, found out after the weights had loaded. The node's linked size
    (ComfyUI does not range-check links) gets the same message."""
    from echomimic_lib.cli import main
    from echomimic_lib.jobs.v3_plan import check_v3_settings
    from tests._pack import sub

    NODE_V3_NAMES = sub("nodes.v3").NODE_V3_NAMES

    out = tmp_path / "x.mp4"
    rc = main(["animate", "--version", "v3-flash", "--reference", str(tmp_path / "none.png"), "--audio",
               str(tmp_path / "none.wav"), "-o", str(out), "--models", str(tmp_path), "--offline", "--width", "4000",
               "--height", "3000"])
    err = capsys.readouterr().err
    assert rc == 2 and "--width 4000: the EchoMimicV3 target area is at most 2048 px a side" in err and "GB" in err, err
    assert "none.png" not in err and not out.exists()  # before the inputs are read
    with pytest.raises(EchoMimicError, match=r"^size 2064: .*at most 2048 px a side.*about \d+ GB.*Use e.g. 768"):
        check_v3_settings(8, 3.0, None, "reanchor", (2064, 2064), names=NODE_V3_NAMES)
    check_v3_settings(8, 3.0, None, "reanchor", (2048, 2048), names=NODE_V3_NAMES)  # the widget's top: allowed


def test_a_reference_with_nan_is_refused_by_the_v3_sampler_as_by_v1_v2s():
    """NaN / inf in the V3 Sampler's picture (a broken upstream node) became black pixels without a word."""
    from tests._pack import sub

    v3, errors = sub("nodes.v3"), sub("echomimic_lib.errors")
    for bad in (float("nan"), float("inf")):
        image = torch.rand(1, 64, 64, 3)
        image[0, 3, 4, 1] = bad
        with pytest.raises(errors.EchoMimicError, match=r"image: the IMAGE holds NaN or infinite values.*connect a picture"):
            v3.checked_reference(image, 64, 8, 3.0, "off", "reanchor")
    rgba = torch.rand(2, 64, 64, 4)
    rgba[1] = float("nan")  # only the first picture is used: the rest is not read
    assert v3.checked_reference(rgba, 64, 8, 3.0, "off", "reanchor")[0].shape == (64, 64, 3)


def test_a_base_file_of_another_wan_size_or_kind_is_refused_from_its_header_before_it_is_read(release, tmp_path, monkeypatch):
    """A Wan 14B (or any other size) or text-to-video base file was read whole -- 28 GB for 14B -- before its shapes
    were compared; the headers now answer first, with the same messages."""
    from echomimic_lib.models.wan import WanV3Config, WanV3Transformer, load_v3_transformer
    from echomimic_lib.models.wan import loader
    from echomimic_lib.models.wan.loader import is_audio_key
    from tests._v3_tiny import TINY, official_config

    base, v3, sd = release
    read = []
    real = loader.read_state_dict
    monkeypatch.setattr(loader, "read_state_dict", lambda p, **k: read.append(p) or real(p, **k))
    big = WanV3Config(**{**TINY.__dict__, "dim": 64, "num_heads": 4, "ffn_dim": 96, "num_layers": 3,
                         "audio": replace(TINY.audio, output_dim=64)})  # a wider Wan (as 14B is to 1.3B)
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in WanV3Transformer(big).state_dict().items() if not is_audio_key(k)}
    wide = {k: torch.zeros(s, dtype=torch.float16) for k, s in names.items()}
    folder = _base_folder(tmp_path, "wide", wide, official_config(big))
    with pytest.raises(WeightsError, match=r"the base model is 64 wide, the V3 file's audio projector gives 32: the base "
                                           r"folder holds another Wan size .*not 14B"):  # was a ValueError
        load_v3_transformer(folder, v3)
    other = WanV3Config(**{**TINY.__dict__, "ffn_dim": 96})  # as wide, another shape: the file against its config
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in WanV3Transformer(other).state_dict().items() if not is_audio_key(k)}
    folder = _base_folder(tmp_path, "ffn", {k: torch.zeros(s, dtype=torch.float16) for k, s in names.items()}, official_config())
    with pytest.raises(WeightsError, match=r"'blocks.0.ffn.0.weight' has shape \(96, 32\), the network expects \(64, 32\) "
                                           r"\(a file for another model size or variant\)"):
        load_v3_transformer(folder, v3)
    t2v = {k: v for k, v in sd.items() if not is_audio_key(k)}
    with pytest.raises(WeightsError, match=r"config says 't2v'"):
        load_v3_transformer(_base_folder(tmp_path, "t2v", t2v, {**official_config(), "model_type": "t2v"}), v3)
    assert read == []  # both refused from the headers: no weight read
    model, report = load_v3_transformer(base, v3)  # the release: read once each, as before
    assert len(read) == 2 and "from the V3 file" in report.summary()


# ------------------------------------------------------------------------------------ --models one folder too deep
def test_models_given_the_v3_set_itself_is_refused_before_a_download(tmp_path, monkeypatch):
    """``--models .../echomimic/v3-flash`` (the set, not the folder above it) looked for v3-flash/v3-flash/ and
    downloaded the whole set (about 20 GB) into it."""
    import huggingface_hub

    from echomimic_lib.jobs.animate_v3 import model_files
    from echomimic_lib.models.wan.sources import FLASH

    fetched = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: fetched.append(k) or 1 / 0)
    for name in ("v3-flash", "my-v3"):
        (tmp_path / name / FLASH).parent.mkdir(parents=True)
        (tmp_path / name / FLASH).write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"--models .*v3-flash is an EchoMimicV3 set itself .*pass --models "
                                           + str(tmp_path).replace("\\", "\\\\") + r"\. \(Nothing was downloaded"):
        model_files(tmp_path / "v3-flash" / "v3-flash", download=True)
    with pytest.raises(WeightsError, match=r"my-v3 is an EchoMimicV3 set itself .*rename or link it as "
                       + str(tmp_path / "v3-flash").replace("\\", "\\\\") + r" .*and pass --models"):
        model_files(tmp_path / "my-v3" / "v3-flash", download=True)
    assert fetched == [] and not (tmp_path / "v3-flash" / "v3-flash").exists()
    with pytest.raises(WeightsError, match="files missing"):  # the right folder, incomplete: as before
        model_files(tmp_path / "v3-flash", download=False)


# ------------------------------------------------------------------------------ half-downloaded encoder folders
def _damage(folder: Path, case: str) -> None:
    if case == "safetensors":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "config":
        (folder / "config.json").write_text((folder / "config.json").read_text()[:100])
    else:  # a pytorch_model.bin cut short
        from safetensors.torch import load_file

        sd = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save(sd, folder / "pytorch_model.bin")
        data = (folder / "pytorch_model.bin").read_bytes()
        (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", ["safetensors", "config", "bin"])
def test_a_cut_wav2vec2_download_is_named_before_the_transformer_loads(tmp_path, monkeypatch, case):
    """Was a bare SafetensorError, ``OSError: [Errno 22] Invalid argument`` or a JSON complaint, after the 3.7 GB
    transformer had loaded (the V3 Loader node read wav2vec2 last)."""
    from echomimic_lib.audio.wav2vec import load_wav2vec
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from tests._pack import sub

    bridge, v3, errors = sub("nodes.comfy_bridge"), sub("nodes.v3"), sub("echomimic_lib.errors")
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    folder = write_tiny_v3(tmp_path / "models" / "echomimic" / "v3-flash")
    _damage(folder / "chinese-wav2vec2-base", case)
    fix = r"chinese-wav2vec2-base: the chinese-wav2vec2-base audio encoder cannot be read .*damaged or cut short.*" \
          r"echomimic download --weights v3-flash"
    with pytest.raises(WeightsError, match=fix):
        load_wav2vec(folder / "chinese-wav2vec2-base")
    loaded = []
    monkeypatch.setattr(sub("echomimic_lib.models.wan"), "load_v3_transformer", lambda *a, **k: loaded.append(a))
    with pytest.raises(errors.WeightsError, match=fix):
        v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    assert loaded == []


def test_a_cut_umt5_or_clip_download_is_named(tmp_path):
    from echomimic_lib.models.wan.tiny import write_tiny_v3
    from echomimic_lib.pipeline.wan.encoders import load_clip_vision, load_umt5

    folder = write_tiny_v3(tmp_path / "v3-flash")
    for sub_folder, load, what in (("umt5-xxl", load_umt5, "umT5-xxl text encoder"),
                                   ("clip-vit-h-14", load_clip_vision, "CLIP ViT-H/14 image encoder")):
        _damage(folder / sub_folder, "safetensors")
        with pytest.raises(WeightsError, match=f"{sub_folder}: the {what} cannot be read .*cut short"):
            load(folder / sub_folder)
