"""Weight files: make-tiny, convert, strict loading, and every bad-file case with a clear error."""
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from echomimic_lib.cli import main as cli_main
from echomimic_lib.errors import MissingWeightsError, UnsafeFileError, WeightsError
from echomimic_lib.model_set import load_cond_encoder, load_denoiser, load_models, read_config, resolve_files
from echomimic_lib.io.weights import read_state_dict


@pytest.fixture(scope="module")
def tiny_v1(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_v1")
    assert cli_main(["make-tiny", str(d), "--version", "v1"]) == 0
    return d


def test_make_tiny_writes_the_official_v1_layout(tiny_v1):
    names = {p.name for p in tiny_v1.iterdir()}
    for stem in ["reference_unet", "denoising_unet", "motion_module", "face_locator", "denoising_unet_acc", "motion_module_acc",
                 "reference_unet_pose", "denoising_unet_pose", "motion_module_pose", "face_locator_pose",
                 "denoising_unet_pose_acc", "motion_module_pose_acc"]:
        assert f"{stem}.pth" in names
    assert (tiny_v1 / "audio_processor" / "whisper_tiny.pt").is_file()
    assert (tiny_v1 / "sd-vae-ft-mse" / "config.json").is_file()
    sd = torch.load(tiny_v1 / "face_locator.pth", weights_only=True)
    assert sd["conv_in.weight"].shape[1] == 1 and sd["conv_in.weight"].dtype == torch.float32
    # outputs that are zero-initialised in a fresh model are random here
    assert sd["conv_out.weight"].abs().sum() > 0
    mm = torch.load(tiny_v1 / "motion_module.pth", weights_only=True)
    assert any(k.endswith("proj_out.weight") and v.abs().sum() > 0 for k, v in mm.items())


@pytest.mark.parametrize("weights,variant", [("v1_audio", "normal"), ("v1_audio", "acc"), ("v1_pose", "normal"), ("v1_pose", "acc")])
def test_every_v1_model_set_loads(tiny_v1, weights, variant):
    m = load_models(tiny_v1, weights, variant, with_vae=True, with_audio=False)
    assert m.cond_encoder.in_channels == (1 if weights == "v1_audio" else 3)
    assert m.denoiser.has_motion


def test_make_tiny_v2_is_fp16_and_loads_in_bf16(tmp_path):
    assert cli_main(["make-tiny", str(tmp_path), "--version", "v2"]) == 0
    sd = torch.load(tmp_path / "denoising_unet.pth", weights_only=True)
    assert {v.dtype for v in sd.values()} == {torch.float16}
    m = load_models(tmp_path, "v2", "acc", dtype=torch.bfloat16, with_vae=False, with_audio=False)
    assert m.dtype == torch.bfloat16 and m.cond_encoder.in_channels == 3


def test_convert_to_safetensors_and_load_identically(tiny_v1, tmp_path):
    out = tmp_path / "st"
    assert cli_main(["convert", str(tiny_v1 / "denoising_unet.pth"), str(out / "denoising_unet.safetensors")]) == 0
    a = read_state_dict(tiny_v1 / "denoising_unet.pth")
    b = read_state_dict(out / "denoising_unet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_clones_shared_storage_views(tmp_path):
    """V2's pose_encoder.pth stores its tensors as views of one big buffer; converting must work."""
    buf = torch.arange(100, dtype=torch.float16)
    torch.save({"a": buf[:10].view(2, 5), "b": buf[50:60]}, tmp_path / "views.pth")
    cli_main(["convert", str(tmp_path / "views.pth"), str(tmp_path / "views.safetensors")])
    sd = read_state_dict(tmp_path / "views.safetensors")
    assert torch.equal(sd["b"], buf[50:60])


def test_malicious_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "denoising_unet.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)  # legacy (non-zip) torch format
    with pytest.raises(UnsafeFileError, match="refused"):
        read_state_dict(path)
    # torch zip format too
    torch.save({"x": Evil()}, tmp_path / "evil_zip.pth")
    with pytest.raises(UnsafeFileError, match="evil_zip.pth"):
        read_state_dict(tmp_path / "evil_zip.pth")
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_missing_files(tiny_v1, tmp_path):
    src = (tiny_v1 / "face_locator.pth").read_bytes()
    (tmp_path / "face_locator.pth").write_bytes(src[: len(src) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt|cannot be read"):
        read_state_dict(tmp_path / "face_locator.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="safetensors"):
        read_state_dict(tmp_path / "garbage.safetensors")
    with pytest.raises(MissingWeightsError):
        read_state_dict(tmp_path / "nope.pth")


def test_nan_weights_are_detected_and_named(tiny_v1, tmp_path):
    sd = torch.load(tiny_v1 / "face_locator.pth", weights_only=True)
    sd["blocks.3.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "face_locator.pth")
    with pytest.raises(WeightsError, match=r"NaN.*blocks\.3\.weight"):
        read_state_dict(tmp_path / "face_locator.pth")


def test_v1_locator_given_to_v2_loader_says_so(tiny_v1):
    cfg = read_config(resolve_files(tiny_v1, "v1_audio", need=()))
    with pytest.raises(WeightsError, match="1-channel face locator.*needs a 3-channel"):
        load_cond_encoder(tiny_v1 / "face_locator.pth", cfg, channels=3)


def test_key_mismatch_lists_missing_unexpected_and_wrong_shapes(tiny_v1, tmp_path):
    cfg = read_config(resolve_files(tiny_v1, "v1_audio", need=()))
    sd = torch.load(tiny_v1 / "denoising_unet.pth", weights_only=True)
    sd.pop("conv_in.weight")
    sd["extra.weight"] = torch.zeros(1)
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    sd[k] = torch.zeros(sd[k].shape[0], 768)  # SD's 768-d text cross-attention instead of 384-d audio
    torch.save(sd, tmp_path / "denoising_unet.pth")
    with pytest.raises(WeightsError) as err:
        load_denoiser(tmp_path / "denoising_unet.pth", tiny_v1 / "motion_module.pth", cfg)
    msg = str(err.value)
    assert "denoising_unet.pth" in msg and "missing 1 key(s): conv_in.weight" in msg
    assert "unexpected 1 key(s): extra.weight" in msg and "wrong shape for 1 key(s)" in msg and "768" in msg


def test_folder_missing_one_file_lists_it_and_where(tiny_v1, tmp_path):
    d = tmp_path / "models"
    shutil.copytree(tiny_v1, d)
    (d / "motion_module_acc.pth").unlink()
    with pytest.raises(MissingWeightsError) as err:
        load_models(d, "v1_audio", "acc", with_audio=False)
    msg = str(err.value)
    assert "motion_module_acc.pth" in msg and str(d) in msg and "BadToBest/EchoMimic" in msg
    assert err.value.missing == ["motion_module_acc.pth"]
    assert "denoising_unet_acc" not in msg.split("Expected layout")[0].replace("motion_module_acc", "")


def test_pth_and_safetensors_give_identical_models(tiny_v1, tmp_path):
    cli_main(["convert", str(tiny_v1), str(tmp_path)])
    for name in ("audio_processor",):
        shutil.copytree(tiny_v1 / name, tmp_path / name)
    shutil.copytree(tiny_v1 / "sd-vae-ft-mse", tmp_path / "sd-vae-ft-mse")
    shutil.copytree(tiny_v1 / "sd-image-variations-diffusers", tmp_path / "sd-image-variations-diffusers")
    shutil.copy(tiny_v1 / "inference_config.json", tmp_path / "inference_config.json")
    a = load_models(tiny_v1, "v1_pose", "normal", with_audio=False, with_vae=False)
    b = load_models(tmp_path, "v1_pose", "normal", with_audio=False, with_vae=False)
    assert b.files["denoiser"].suffix == ".safetensors"
    sa, sb = a.denoiser.state_dict(), b.denoiser.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_vae_reads_its_architecture_from_the_file(tiny_v1, tmp_path):
    """A VAE file from ComfyUI's models/vae: the architecture comes from the tensor shapes."""
    from diffusers import AutoencoderKL

    from echomimic_lib.model_set import load_vae
    from echomimic_lib.io.weights import save_state_dict

    state = AutoencoderKL.from_pretrained(str(tiny_v1 / "sd-vae-ft-mse")).state_dict()
    save_state_dict(state, tmp_path / "tiny_vae.safetensors")
    vae = load_vae(tmp_path / "tiny_vae.safetensors")
    assert list(vae.config.block_out_channels) == [32, 32, 32, 32] and vae.config.layers_per_block == 1
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in state.items())
    save_state_dict({"x": torch.zeros(1)}, tmp_path / "not_a_vae.safetensors")
    with pytest.raises(WeightsError, match="not a VAE"):
        load_vae(tmp_path / "not_a_vae.safetensors")


def _mapped_ranges(files: list[Path]) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``files`` (Linux /proc/self/maps)."""
    names = {str(Path(f).resolve()) for f in files}
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in names:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _file_backed(tensor: torch.Tensor, ranges) -> bool:
    ptr = tensor.untyped_storage().data_ptr()
    return any(lo <= ptr < hi for lo, hi in ranges)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_cpu_weights_live_in_private_memory_not_in_the_file_mapping(tiny_v1):
    """The .pth files are memory-mapped to be read once; what the CPU computes on must be ordinary memory."""
    from echomimic_lib.io.weights import load_strict

    files = [tiny_v1 / n for n in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth")]
    state = read_state_dict(files[1])
    assert not state.owned and _file_backed(next(iter(state.values())), _mapped_ranges(files))  # the check sees a mapping
    del state
    m = load_models(tiny_v1, "v1_audio", "normal", with_audio=False, with_vae=False)
    ranges = _mapped_ranges(files)
    mapped = [n for mod in (m.reference, m.denoiser, m.cond_encoder) for n, p in mod.named_parameters() if _file_backed(p, ranges)]
    assert mapped == []
    # a safetensors read already is private memory of the right dtype: adopted without another copy
    out = Path(tiny_v1.parent / "st_adopt")
    cli_main(["convert", str(tiny_v1 / "face_locator.pth"), str(out / "face_locator.safetensors")])
    st = read_state_dict(out / "face_locator.safetensors")
    assert st.owned
    cfg = read_config(resolve_files(tiny_v1, "v1_audio", need=()))
    from echomimic_lib.models.unet import ConditionEncoder

    with torch.device("meta"):
        enc = ConditionEncoder(1, cfg.cond_out_channels, cfg.cond_block_channels)
    ptrs = {k: v.data_ptr() for k, v in st.items()}
    load_strict(enc, st, "face_locator.safetensors", "cpu", torch.float32)
    assert all(p.data_ptr() == ptrs[k] for k, p in enc.state_dict().items())


def test_nan_in_a_file_is_named_when_loading_the_model_set(tiny_v1, tmp_path):
    """The NaN/Inf check runs on the copy (the file is read once) and still names the tensor."""
    d = tmp_path / "models"
    shutil.copytree(tiny_v1, d)
    sd = torch.load(d / "motion_module.pth", weights_only=True)
    key = next(k for k in sd if k.endswith("proj_in.weight"))
    sd[key][0, 0] = float("inf")
    torch.save(sd, d / "motion_module.pth")
    with pytest.raises(WeightsError, match=rf"NaN or Inf.*{key}"):
        load_models(d, "v1_audio", "normal", with_audio=False, with_vae=False)
