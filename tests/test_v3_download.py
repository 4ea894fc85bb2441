"""``echomimic download --weights v3-flash`` and ``animate --version v3-flash`` fetching what is missing, against a fake
Hugging Face Hub (no network here) that serves a tiny V3 set under the real repositories' names: the umT5 encoder
sharded with an index (as Wan-AI's Diffusers repos hold it), chinese-wav2vec2-base as pytorch_model.bin (as
TencentGameMate's repo holds it), the VAE as an official-layout Wan2.1_VAE.pth (the parity fixture's)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from echomimic_lib.models.wan.sources import BASE, CLIP_REPO, SOURCES, UMT5_REPO, V3_FOLDER

PARITY_VAE = "fixtures/parity_v3/v3/models/Wan2.1-Fun-V1.1-1.3B-InP/Wan2.1_VAE.pth"
BASE_REPO, FLASH_REPO, W2V_REPO = "alibaba-pai/Wan2.1-Fun-V1.1-1.3B-InP", "BadToBest/EchoMimicV3", "TencentGameMate/chinese-wav2vec2-base"


@pytest.fixture(scope="module")
def hub(tmp_path_factory, shared_data) -> dict:
    """(repo, path in the repo) -> a local file."""
    import torch
    from safetensors.torch import load_file
    from transformers import UMT5EncoderModel

    from echomimic_lib.models.wan.tiny import write_tiny_v3

    src = write_tiny_v3(tmp_path_factory.mktemp("tiny_v3"))
    extra = tmp_path_factory.mktemp("hub_extra")
    te = extra / "text_encoder"
    UMT5EncoderModel.from_pretrained(str(src / "umt5-xxl")).save_pretrained(str(te), max_shard_size="6KB")
    torch.save(load_file(str(src / "chinese-wav2vec2-base" / "model.safetensors")), extra / "pytorch_model.bin")
    (extra / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    (extra / "spiece.model").write_bytes(b"sentencepiece stand-in (the fast tokenizer reads tokenizer.json)")
    files = {
        (BASE_REPO, "config.json"): src / BASE / "config.json",
        (BASE_REPO, "diffusion_pytorch_model.safetensors"): src / BASE / "diffusion_pytorch_model.safetensors",
        (BASE_REPO, "Wan2.1_VAE.pth"): shared_data.parent / PARITY_VAE,
        (FLASH_REPO, "echomimicv3-flash-pro/diffusion_pytorch_model.safetensors"): src / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors",
        (W2V_REPO, "config.json"): src / "chinese-wav2vec2-base" / "config.json",
        (W2V_REPO, "preprocessor_config.json"): src / "chinese-wav2vec2-base" / "preprocessor_config.json",
        (W2V_REPO, "pytorch_model.bin"): extra / "pytorch_model.bin",
        (UMT5_REPO, "tokenizer/tokenizer_config.json"): src / "umt5-xxl" / "tokenizer_config.json",
        (UMT5_REPO, "tokenizer/tokenizer.json"): src / "umt5-xxl" / "tokenizer.json",
        (UMT5_REPO, "tokenizer/special_tokens_map.json"): extra / "special_tokens_map.json",
        (UMT5_REPO, "tokenizer/spiece.model"): extra / "spiece.model",
        (CLIP_REPO, "image_encoder/config.json"): src / "clip-vit-h-14" / "config.json",
        (CLIP_REPO, "image_encoder/model.safetensors"): src / "clip-vit-h-14" / "model.safetensors",
    }
    files.update({(UMT5_REPO, f"text_encoder/{p.name}"): p for p in te.iterdir()})
    assert len([k for k in files if k[1].startswith("text_encoder/model-")]) >= 2  # really sharded
    assert all(p.is_file() for p in files.values())
    return files


class FakeHub:
    """``hf_hub_download`` as huggingface_hub does it with ``local_dir``: the file under its repo path in local_dir.
    ``fail``: the repo path whose download breaks off after writing half of it."""

    def __init__(self, files: dict, fail: str | None = None):
        self.files, self.fail, self.calls = files, fail, []

    def __call__(self, repo_id, filename, local_dir, **kw):
        self.calls.append((repo_id, filename))
        dst = Path(local_dir) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        if (repo_id, filename) not in self.files:
            raise FileNotFoundError(f"404: {repo_id} has no {filename}")
        data = self.files[(repo_id, filename)].read_bytes()
        if filename == self.fail:
            dst.write_bytes(data[: len(data) // 2])
            raise ConnectionError("connection reset by peer")
        dst.write_bytes(data)
        return str(dst)


@pytest.fixture
def fake(hub, monkeypatch):
    import huggingface_hub

    def install(fail=None):
        f = FakeHub(hub, fail)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", f)
        return f

    return install


def _expected(hub) -> set[str]:
    """Every file of the set, as placed in v3-flash/."""
    out = set()
    for repo, path in hub:
        src = next(s for s in SOURCES if s.repo == repo and (path.startswith(s.remote + "/") if s.remote else "/" not in path))
        out.add(f"{src.folder}/{path[len(src.remote) + 1:] if src.remote else path}")
    return out


def _tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _animate(shared_data, models, out, *extra):
    return cli(["animate", "--version", "v3-flash", "--reference", str(shared_data / "images" / "portrait_a.png"),
                "--audio", str(shared_data / "audio" / "echomimic_en.wav"), "-o", str(out), "--models", str(models),
                "--width", "64", "--height", "64", "--steps", "2", "--length", "5", "--prompt", "a man is speaking .",
                "--device", "cpu", *extra])


def test_animate_fetches_the_missing_set_and_runs_on_it(fake, hub, shared_data, tmp_path, capsys):
    """animate without --offline: the whole set is fetched into the layout (index first, then its shards), then
    loaded and run by the V3 loaders (sharded umT5 + tokenizer side by side, wav2vec2 .bin, official VAE .pth)."""
    f = fake()
    models = tmp_path / "models"
    assert _animate(shared_data, models, tmp_path / "v3.mp4") == 0, capsys.readouterr().err
    assert (tmp_path / "v3.mp4").is_file()
    folder = models / V3_FOLDER
    assert _tree(folder) - {p for p in _tree(folder) if p.startswith("prompt_cache/")} == _expected(hub)
    assert not list(folder.glob(".echomimic-download*"))  # the staging folder is gone
    names = [n for _, n in f.calls]
    assert names.index("text_encoder/model.safetensors.index.json") < min(i for i, n in enumerate(names) if n.startswith("text_encoder/model-"))
    assert len(f.calls) == len(hub)  # each file once
    capsys.readouterr()
    assert cli(["download", "--weights", "v3-flash", "--models", str(models)]) == 0  # complete: nothing fetched again
    assert len(f.calls) == len(hub)
    out = capsys.readouterr().out
    assert f"umt5: {folder / 'umt5-xxl'}" in out and f"vae: {folder / BASE / 'Wan2.1_VAE.pth'}" in out


def test_existing_files_are_kept_unless_force(fake, hub, tmp_path):
    f = fake()
    folder = tmp_path / V3_FOLDER
    mine = folder / "chinese-wav2vec2-base" / "config.json"
    flash = folder / "echomimicv3-flash-pro" / "diffusion_pytorch_model.safetensors"
    for p in (mine, flash):
        p.parent.mkdir(parents=True)
        p.write_text("the user's own")
    assert cli(["download", "--weights", "v3-flash", "--models", str(tmp_path)]) == 0
    assert mine.read_text() == flash.read_text() == "the user's own"
    assert (W2V_REPO, "config.json") not in f.calls and (W2V_REPO, "pytorch_model.bin") in f.calls
    # --force: an incomplete part is fetched whole again; a complete one is never touched
    (folder / "chinese-wav2vec2-base" / "pytorch_model.bin").unlink()
    assert cli(["download", "--weights", "v3-flash", "--models", str(tmp_path), "--force"]) == 0
    assert mine.read_bytes() == hub[(W2V_REPO, "config.json")].read_bytes()
    assert flash.read_text() == "the user's own"
    assert cli(["download", "--weights", "v3-flash", "--variant", "acc", "--models", str(tmp_path)]) == 2


def test_a_broken_download_names_repo_and_file_and_leaves_nothing_half_written(fake, hub, tmp_path, capsys):
    shard = sorted(n for r, n in hub if n.startswith("text_encoder/model-"))[1]
    fake(fail=shard)
    folder = tmp_path / V3_FOLDER
    assert cli(["download", "--weights", "v3-flash", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"https://huggingface.co/{UMT5_REPO}" in err and shard in err
    assert "connection reset by peer" in err and "HF_ENDPOINT" in err and "--offline" in err
    assert not (folder / "umt5-xxl" / Path(shard).name).exists()  # the half file never got its name
    assert not list(folder.glob(".echomimic-download*"))  # the staging folder is gone
    before = _tree(folder)
    assert "umt5-xxl/model.safetensors.index.json" in before and len(before) > 5  # what was complete is kept
    f = fake()  # the network is back: only the rest is fetched
    assert cli(["download", "--weights", "v3-flash", "--models", str(tmp_path)]) == 0
    assert {f"umt5-xxl/{Path(n).name}" for _, n in f.calls if n.startswith("text_encoder/")} == \
        {f"umt5-xxl/{Path(n).name}" for _, n in hub if n.startswith("text_encoder/")} - before
    assert _tree(folder) == _expected(hub)


def test_offline_lists_every_missing_file_before_any_work(hub, shared_data, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def no_download(**kw):
        raise AssertionError("--offline must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    out = tmp_path / "v3.mp4"
    assert _animate(shared_data, tmp_path, out, "--offline") == 2
    err = capsys.readouterr().err
    assert "flash-pro files missing" in err and "echomimic download --weights v3-flash" in err and not out.exists()
    for repo, path in hub:
        if not path.startswith("text_encoder/model-"):  # the shards' names come with their index
            assert f"https://huggingface.co/{repo}" in err and Path(path).name in err
    for name in _expected(hub):
        if "/model-0" not in name:
            assert name in err, name
    assert err.count("looked in") == len(SOURCES)
    # once the index is there, the shards it names are listed by name
    index = next(p for (r, n), p in hub.items() if n.endswith(".index.json"))
    (tmp_path / V3_FOLDER / "umt5-xxl").mkdir(parents=True)
    shutil.copy(index, tmp_path / V3_FOLDER / "umt5-xxl" / index.name)
    assert _animate(shared_data, tmp_path, out, "--offline") == 2
    err = capsys.readouterr().err
    assert all(f"umt5-xxl/{Path(n).name}" in err for _, n in hub if n.startswith("text_encoder/model-"))


def test_wav2vec2_bin_is_read_through_transformers_weights_only_path(hub, tmp_path, monkeypatch):
    import torch

    from echomimic_lib.audio.wav2vec import load_wav2vec

    folder = tmp_path / "chinese-wav2vec2-base"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json", "pytorch_model.bin"):
        shutil.copy(hub[(W2V_REPO, name)], folder / name)
    calls, real = [], torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    enc = load_wav2vec(folder)
    assert calls and all(c is True for c in calls)
    assert enc.model.config.num_hidden_layers == 3


def test_the_comfyui_loader_fetches_only_what_its_graph_reads(fake, hub, tmp_path, monkeypatch):
    """auto_download on the V3 loader node: the base transformer, the flash-pro file and wav2vec2 (core's loaders give
    the text / image encoders and the VAE), into models/echomimic/<folder>; a folder name leaving it is refused."""
    from tests._pack import sub

    bridge, v3 = sub("nodes.comfy_bridge"), sub("nodes.v3")
    EchoMimicError = sub("echomimic_lib.errors").EchoMimicError  # the pack's own copy of the library
    monkeypatch.setattr(bridge, "MODELS_DIR", tmp_path / "models")
    f = fake()
    with pytest.raises(EchoMimicError, match="auto_download"):  # off: the message says how to get the files
        v3.EchoMimicV3Loader().execute("v3-flash", "fp32")
    assert f.calls == []
    (handle,) = v3.EchoMimicV3Loader().execute("v3-flash", "fp32", auto_download=True)
    assert "from the V3 file" in handle.report
    assert {repo for repo, _ in f.calls} == {BASE_REPO, FLASH_REPO, W2V_REPO}
    assert (BASE_REPO, "Wan2.1_VAE.pth") not in f.calls
    assert v3.v3_folders() == ["v3-flash"]  # now listed
    f.calls.clear()
    v3.EchoMimicV3Loader().execute("v3-flash", "fp32", auto_download=True)
    assert f.calls == []  # complete: nothing fetched again
    with pytest.raises(EchoMimicError, match="absolute paths and '..' are refused"):
        v3.EchoMimicV3Loader().execute("../elsewhere", "fp32", auto_download=True)
    assert f.calls == [] and not (tmp_path / "models" / "elsewhere").exists()
