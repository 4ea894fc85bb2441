"""Weight download into the models layout (huggingface_hub mocked: no network here) and the
attention-backend fallback."""
import logging
import shutil
from pathlib import Path

import pytest

from echomimic_lib.model_set import ensure_weights
from echomimic_lib.errors import MissingWeightsError
from echomimic_lib.models.unet.attention import resolve_backend


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A fake hub: repo -> folder of files, made from a tiny model set."""
    from tests._tiny_shared import tiny_v1_copy  # `make-tiny --version v1`'s folder (that command: test_weights.py)

    src = tiny_v1_copy(tmp_path_factory, tmp_path_factory.mktemp("hub") / "src")
    return {"BadToBest/EchoMimic": src, "stabilityai/sd-vae-ft-mse": src / "sd-vae-ft-mse"}


def test_missing_weights_are_downloaded_into_the_layout(hub, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, local_dir, **kw):
        calls.append((repo_id, filename))
        dst = Path(local_dir) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(hub[repo_id] / filename, dst)
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    root = tmp_path / "models"
    # configs describe the tiny architecture; a user's folder would use the built-in SD1.5 config
    shutil.copytree(hub["BadToBest/EchoMimic"] / "sd-image-variations-diffusers", root / "sd-image-variations-diffusers")
    shutil.copy(hub["BadToBest/EchoMimic"] / "inference_config.json", root / "inference_config.json")
    files = ensure_weights(root, "v1_audio", "acc")
    assert ("BadToBest/EchoMimic", "denoising_unet_acc.pth") in calls
    assert ("BadToBest/EchoMimic", "audio_processor/whisper_tiny.pt") in calls
    assert ("stabilityai/sd-vae-ft-mse", "config.json") in calls
    assert files["denoiser"] == root / "v1" / "denoising_unet_acc.pth"
    assert files["whisper"] == root / "audio_processor" / "whisper_tiny.pt"
    n = len(calls)
    ensure_weights(root, "v1_audio", "acc")  # everything present: nothing fetched again
    assert len(calls) == n


def test_offline_error_lists_every_missing_file(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        ensure_weights(tmp_path, "v2", "normal", download=False)
    msg = str(err.value)
    for name in ("reference_unet.pth", "denoising_unet.pth", "motion_module.pth", "pose_encoder.pth", "sd-vae-ft-mse", "whisper_tiny.pt"):
        assert name in msg
    assert "BadToBest/EchoMimicV2" in msg and "echomimic download" in msg


def test_xformers_request_falls_back_to_sdpa_with_a_reason(caplog):
    try:
        import xformers  # noqa: F401
    except ImportError:
        with caplog.at_level(logging.WARNING):
            assert resolve_backend("xformers") == "sdpa"
        assert "xformers" in caplog.text and "SDPA" in caplog.text
    else:  # pragma: no cover - only where xformers is installed
        assert resolve_backend("xformers") == "xformers"
    assert resolve_backend(None) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("flash9")


def test_sdpa_kernel_backends_allow_their_kernel_first_and_never_the_math_path():
    import torch

    from echomimic_lib.models.unet.attention import BACKENDS, attend, resolve_backend, sdpa_choice

    b = torch.backends.cuda
    for name, want in (("sdpa-cudnn", b.cudnn_sdp_enabled), ("sdpa-flash", b.flash_sdp_enabled)):
        assert name in BACKENDS and resolve_backend(name) == name
        with sdpa_choice(name):
            assert want() and b.mem_efficient_sdp_enabled() and not b.math_sdp_enabled()
        assert b.math_sdp_enabled()  # restored afterwards
    q, k = torch.randn(2, 64, 320), torch.randn(2, 128, 320)  # on the CPU the choice is plain sdpa: same values
    torch.testing.assert_close(attend(q, k, k, 8, "sdpa-cudnn"), attend(q, k, k, 8, "sdpa"), atol=0, rtol=0)


def test_two_downloads_at_once_keep_to_their_own_staging_folders(tmp_path, monkeypatch):
    """Batch workers may fetch into one models folder at the same time: one finishing (and cleaning up) must not take
    away a file the other is still downloading."""
    import huggingface_hub

    from echomimic_lib.io.hub import HubFile, fetch

    root = tmp_path / "models"

    def fake_download(repo_id, filename, local_dir, **kw):
        dst = Path(local_dir) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(filename.encode())
        if filename == "a.bin":  # a.bin is still in its staging folder while the second worker fetches b.bin
            fetch([HubFile("org/b", "b.bin", root / "b.bin")], root, "worker 2")
        return str(dst)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert fetch([HubFile("org/a", "a.bin", root / "a.bin")], root, "worker 1") == [root / "a.bin"]
    assert (root / "a.bin").read_bytes() == b"a.bin" and (root / "b.bin").read_bytes() == b"b.bin"
    assert not list(root.glob(".echomimic-download*"))  # both staging folders are gone
