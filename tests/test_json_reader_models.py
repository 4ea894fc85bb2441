"""The library's JSON readers of model folders and its own files, moved onto echomimic_lib.io.json_file: a damaged
config or weight index, one nested past what Python's parser reads, of another kind (a list where an object belongs)
or a folder where the file belongs is one clear error of the caller's class, naming the file, the problem and the fix
(they were raw JSONDecodeError / RecursionError / AttributeError / KeyError / IsADirectoryError tracebacks). Each
test goes through the entry point a user (or a node) calls; the good files still read the same."""
from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError, WeightsError

DEEP = "[" * 100_000 + "]" * 100_000
V1_FILES = ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "face_locator.pth")


def _v1_folder(root, unet=None, inference=None):
    """A V1 set whose weight files are only there (the config is read before any of them; whole, empty torch files, as
    `echomimic doctor` reads a zip-format .pth's index)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in V1_FILES:
        torch.save({}, root / n)
    for rel, content in (("unet/config.json", unet), ("inference_config.json", inference)):
        if content is not None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).mkdir() if content == "folder" else (root / rel).write_text(content)
    return root


# model_set.read_config / load_models: unet/config.json and inference_config.json ------------------------------------------
@pytest.mark.parametrize("which, content, problem", [
    ("unet", DEEP, "nested too deeply"),
    ("unet", "[1, 2]", "it holds a list [...] where an object {...} belongs"),
    ("unet", "folder", "it is a folder, not a file"),
    ("unet", '{"layers_per_block": 2}', "no 'block_out_channels' entry"),
    ("inference", '{"unet_additional_kwargs": [1]', "not valid JSON"),
    ("inference", "[1]", "it holds a list"),
    ("inference", '{"unet_additional_kwargs": [1]}', "its unet_additional_kwargs is not an object"),
], ids=["unet-deep", "unet-list", "unet-folder", "unet-no-widths", "inference-cut", "inference-list", "add-a-list"])
def test_a_damaged_model_config_stops_load_models_with_a_weights_error(tmp_path, which, content, problem):
    from echomimic_lib.model_set import load_models

    root = _v1_folder(tmp_path / "set", **{which: content})
    name = "unet/config.json" if which == "unet" else "inference_config.json"
    with pytest.raises(WeightsError) as got:  # before: RecursionError / AttributeError / IsADirectoryError / KeyError
        load_models(root, "v1_audio", with_vae=False, with_audio=False)
    msg = str(got.value)
    assert str(root / name) in msg and problem in msg and "delete it: the built-in SD1.5 layout" in msg, msg


def test_good_model_configs_read_as_before(tmp_path):
    from echomimic_lib.config import SD15, TINY, EchoConfig, inference_config_dict, unet_config_dict
    from echomimic_lib.model_set import read_config, resolve_files

    assert read_config(resolve_files(_v1_folder(tmp_path / "plain"), "v1_audio", need=())) == SD15
    root = _v1_folder(tmp_path / "tiny", unet=json.dumps(unet_config_dict(TINY)),
                      inference=json.dumps(inference_config_dict(TINY)))
    assert read_config(resolve_files(root, "v1_audio", need=())) == TINY
    assert EchoConfig.from_files(root / "unet/config.json", root / "inference_config.json") == TINY


def test_echo_config_from_files_names_a_damaged_file(tmp_path):
    from echomimic_lib.config import EchoConfig

    f = tmp_path / "config.json"
    f.write_text('{"block_out_channels": [32, 32, 64, 64], ')
    with pytest.raises(WeightsError, match=rf"^{f}: not a readable UNet config.json \(not valid JSON: .*\); copy it again"):
        EchoConfig.from_files(f)  # before: JSONDecodeError
    y = tmp_path / "inference.yaml"
    y.write_text("- a list\n")
    f.write_text("{}")
    with pytest.raises(WeightsError, match=rf"^{y}: not a readable inference config \(it holds list"):
        EchoConfig.from_files(f, y)  # before: AttributeError 'list' object has no attribute 'get'


# audio/whisper: a Hugging Face whisper-tiny folder's config.json and weight index -------------------------------------------
TINY_WHISPER = {"model_type": "whisper", "d_model": 384, "encoder_attention_heads": 6, "encoder_layers": 4}


@pytest.mark.parametrize("config, index, problem", [
    ("[1]", None, r"config.json: not a readable JSON config \(it holds a list"),
    (DEEP, None, r"config.json: not a readable JSON config \(nested too deeply"),
    (None, DEEP, r"model.safetensors.index.json: not a readable weight index \(nested too deeply"),
    (None, '{"weight_map": [1]}', r"model.safetensors.index.json: not a weight index \(no 'weight_map'"),
    (None, '{"metadata": {}}', r"model.safetensors.index.json: not a weight index \(no 'weight_map'"),
    (None, '{"weight_map": {"a": "../../elsewhere.bin"}}', r"not a weight index \(no 'weight_map' of tensor names to file "
                                                           r"names in its folder\)"),
], ids=["config-list", "config-deep", "index-deep", "map-a-list", "no-map", "shard-outside"])
def test_a_damaged_whisper_folder_is_a_weights_error_naming_the_file(tmp_path, config, index, problem):
    from echomimic_lib.audio.whisper import load_whisper_encoder

    (tmp_path / "config.json").write_text(config if config is not None else json.dumps(TINY_WHISPER))
    (tmp_path / "model.safetensors.index.json").write_text(index or '{"weight_map": {"a": "model-1.safetensors"}}')
    with pytest.raises(WeightsError, match=problem + r".*download .*openai/whisper-tiny"):
        load_whisper_encoder(tmp_path)  # before: AttributeError / RecursionError / KeyError / a path outside the folder


# models/wan: the V3 base folder's config.json and the sharded umT5's weight index --------------------------------------------
def test_a_v3_base_config_nested_too_deeply_is_a_weights_error(tmp_path):
    from echomimic_lib.models.wan import load_v3_transformer

    base = tmp_path / "Wan2.1-Fun-V1.1-1.3B-InP"
    base.mkdir()
    (base / "diffusion_pytorch_model.safetensors").write_bytes(b"not read")
    (base / "config.json").write_text(DEEP)
    with pytest.raises(WeightsError, match=rf"^{base / 'config.json'}: not a readable config.json \(nested too deeply"
                                           r".*Download it again"):
        load_v3_transformer(base, tmp_path / "flash.safetensors")  # before: RecursionError


@pytest.mark.parametrize("index, problem", [
    (DEEP, r"not a readable weight index \(nested too deeply to be read\)"),
    ('{"weight_map": {"w": "../../../elsewhere.safetensors"}}', r"not a readable weight index \(no 'weight_map' of "
                                                                 r"tensor names to file names in its folder\)"),
], ids=["deep", "shard-outside"])
def test_a_damaged_v3_weight_index_is_a_weights_error_and_a_broken_doctor_row(tmp_path, index, problem):
    from echomimic_lib.jobs.doctor.models import check_v3
    from echomimic_lib.model_set import ensure_v3

    folder = tmp_path / "v3-flash"
    (folder / "umt5-xxl").mkdir(parents=True)
    idx = folder / "umt5-xxl" / "model.safetensors.index.json"
    idx.write_text(index)
    with pytest.raises(WeightsError, match=rf"^{idx}: {problem}; delete it and download again$"):
        ensure_v3(folder, download=False)  # before: RecursionError / a shard to fetch outside the folder
    row = check_v3(tmp_path)  # `echomimic doctor`: before, the RecursionError stopped the whole report
    assert row["status"] == "broken" and str(idx) in row["broken"][0]["problem"] and "download" in row["fix"]


# pipeline/wan/chunk_state: a long V3 render's kept state ---------------------------------------------------------------
def test_a_damaged_resume_state_is_named_and_the_render_starts_afresh(tmp_path, caplog):
    from echomimic_lib.pipeline.wan.chunk_state import STATE, ChunkCheckpoint

    folder = tmp_path / "out.resume-v3"
    folder.mkdir()
    (folder / STATE).write_text('{"format": "echomimic-v3-chunks-1", "chunks_done": ')
    with caplog.at_level(logging.WARNING):
        assert ChunkCheckpoint(folder, "fp", [81, 81], (64, 64), 5, True).load() is None
    said = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(said) == 1 and f"{folder / STATE}: not a resume state (not valid JSON: " in said[0], said
    assert "it is replaced at the first save" in said[0]  # before: the parser's words alone, no file named


# lora/files: the adapter's metadata values ------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, problem", [
    ("rank", DEEP, "damaged LoRA metadata field 'rank' (nested too deeply to be read)"),
    ("rank", '"16"', "damaged LoRA metadata field 'rank' (it holds text where a number belongs)"),
    ("alpha", "true", "damaged LoRA metadata field 'alpha' (true or false where a number belongs)"),
    ("targets", '{"to_q": 1}', "damaged LoRA metadata field 'targets' (it holds an object {...} where a list [...] "
                               "belongs)"),
    ("format_version", "two", "damaged LoRA metadata (format_version 'two' is not a number)"),
], ids=["rank-deep", "rank-text", "alpha-bool", "targets-object", "version-text"])
def test_damaged_lora_metadata_is_named_with_the_field(tmp_path, field, value, problem):
    from safetensors.torch import save_file

    from echomimic_lib.lora.files import LoraInfo, read_lora

    meta = {**LoraInfo(weights="v1_audio", rank=1).to_metadata(), field: value}
    path = tmp_path / "adapter.safetensors"
    save_file({"denoiser.x.lora_A.weight": torch.zeros(1, 2)}, str(path), metadata=meta)
    with pytest.raises(WeightsError) as got:  # before: "not a readable safetensors file (...); it may be truncated"
        read_lora(path)
    msg = str(got.value)
    assert msg.startswith(f"{path}: {problem}") and "xport the adapter again" in msg, msg


def test_good_lora_metadata_reads_as_before():
    from echomimic_lib.lora.files import LoraInfo

    info = LoraInfo(weights="v2", variant="acc", rank=8, alpha=4.5, use_rslora=True, targets=["to_q"],
                    networks=["denoiser", "reference"], base={"path": "x"}, training={"step": 3})
    assert LoraInfo.from_metadata(info.to_metadata(), "here") == info


# pose/io and the gesture index: the npz's "meta" entry -----------------------------------------------------------------
@pytest.mark.parametrize("meta", [DEEP.encode(), b"[1, 2]", b'{"format": "\xff"}'], ids=["deep", "a list", "not utf-8"])
def test_a_pose_npz_with_a_damaged_meta_entry_names_the_file_and_the_fix(tmp_path, meta):
    from echomimic_lib.pose.io import load_pose

    path = tmp_path / "pose.npz"
    np.savez(path, meta=np.frombuffer(meta, np.uint8), bodies=np.zeros((2, 1)))
    with pytest.raises(EchoMimicError, match=rf"^{path}: not an EchoMimic pose sequence: its 'meta' entry is not readable "
                                             r"\(.+\); write it again with `echomimic poses VIDEO -o FILE.npz`$"):
        load_pose(path)  # before: "(no readable 'meta' entry)", neither the problem nor the fix


def test_a_gesture_index_with_a_damaged_meta_is_rebuilt_saying_why(tmp_path, caplog):
    from echomimic_lib.pose.gestures.library import cache_path, index_path
    from echomimic_lib.pose.io import save_pose_npz
    from echomimic_lib.pose.sequence import _SHAPES, ARRAY_FIELDS, PoseSequence

    arrays = {name: np.zeros((4, *_SHAPES[name])) for name in ARRAY_FIELDS}
    arrays["frame_ids"] = np.arange(4)
    arrays["draw_pose_params"] = np.tile([768, 768, 0, 768, 0, 768], (4, 1))
    src = save_pose_npz(PoseSequence(**arrays), tmp_path / "lib" / "a.npz")
    cache = tmp_path / "cache"
    first = index_path(src, cache_dir=cache)
    assert first[2] is False
    index = cache_path(src, cache)
    with np.load(index) as z:
        kept = {k: z[k] for k in z.files}
    np.savez_compressed(index, **{**kept, "meta": np.frombuffer(b"[1, 2]", np.uint8)})
    with caplog.at_level(logging.INFO):
        again = index_path(src, cache_dir=cache)
    assert again[2] is False and again[0].fps == first[0].fps  # rebuilt, as before
    said = [r.getMessage() for r in caplog.records if "not usable" in r.getMessage()]
    assert said and "its 'meta' entry: unreadable (it holds a list [...] where an object {...} belongs)" in said[0], said
    assert index_path(src, cache_dir=cache)[2] is True  # the rebuilt index is used again


# jobs/doctor/models: a weight file's safetensors header ----------------------------------------------------------------
@pytest.mark.parametrize("header, problem", [
    (DEEP.encode(), "its .safetensors header: is damaged (nested too deeply to be read); a broken-off download?"),
    (b"[1, 2]", "its .safetensors header: is damaged (it holds a list [...] where an object {...} belongs)"),
    (b'{"a": "\xff"}', "its .safetensors header: is damaged (not UTF-8 text"),
], ids=["deep", "a list", "not utf-8"])
def test_the_doctor_names_a_damaged_safetensors_header_instead_of_stopping(tmp_path, header, problem):
    from echomimic_lib.jobs.doctor.models import check_weight_set

    root = _v1_folder(tmp_path / "set")
    bad = root / "denoising_unet.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    (root / "denoising_unet.pth").unlink()
    row = check_weight_set(root, "v1_audio", "normal", need=("reference", "denoiser", "motion", "cond"))
    assert row["status"] == "broken", row  # before: RecursionError / AttributeError out of `echomimic doctor`
    assert row["broken"][0]["path"] == str(bad) and row["broken"][0]["problem"].startswith(problem), row
    assert "echomimic download --weights v1_audio" in row["fix"]


def test_the_doctor_refuses_a_safetensors_header_over_the_size_safetensors_reads(tmp_path):
    from echomimic_lib.jobs.doctor.models import file_problem

    f = tmp_path / "w.safetensors"
    with open(f, "wb") as fh:
        fh.write(struct.pack("<Q", 200_000_000))
        fh.truncate(200_000_100)  # sparse: the header is never read
    assert "over the 100000000 one may be" in file_problem(f)
