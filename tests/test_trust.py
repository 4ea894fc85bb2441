"""Issue 28, data loss and security: nothing a user owns is overwritten without --force, no checkpoint file runs
code on resume, a multi-channel sound track keeps its speech, finished files get the umask's permissions."""
from __future__ import annotations

import errno
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from echomimic_lib.cli import main as cli


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_tiny_never_overwrites_a_different_weight_file(tmp_path, capsys):
    d = tmp_path / "models"
    assert cli(["make-tiny", str(d), "--version", "v1"]) == 0
    real = d / "denoising_unet.pth"
    real.write_bytes(b"pretend these are downloaded weights")
    before = _snapshot(d)
    capsys.readouterr()
    assert cli(["make-tiny", str(d), "--version", "v1"]) == 2
    err = capsys.readouterr().err
    assert str(real) in err and "--force" in err and "Traceback" not in err, err
    assert _snapshot(d) == before  # nothing replaced, nothing added
    assert not [p for p in d.iterdir() if p.name.startswith(".tiny-")]  # no staging left
    assert cli(["make-tiny", str(d), "--version", "v1", "--force"]) == 0
    assert real.read_bytes() != b"pretend these are downloaded weights"
    assert torch.load(real, weights_only=True)  # a real state dict again


def test_make_tiny_disk_full_leaves_nothing(tmp_path, monkeypatch, capsys):
    calls = []
    real_save = torch.save

    def full(obj, f, *a, **k):
        calls.append(f)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    d = tmp_path / "new" / "models"
    assert cli(["make-tiny", str(d), "--version", "v1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write into {d}: no space left on the disk; free some space" in err, err
    assert "Nothing partial was kept" in err and "Traceback" not in err and ".tiny-" not in err, err
    assert len(calls) == 3 and not (tmp_path / "new").exists()  # the folders it created are gone too


@pytest.fixture
def pth(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"a": torch.arange(4.0), "b": torch.ones(2, 2)}, p)
    return p


def test_convert_refuses_an_existing_target_unless_forced(pth, tmp_path, capsys, umask_022):
    dst = tmp_path / "w.safetensors"
    dst.write_bytes(b"mine")
    assert cli(["convert", str(pth), str(dst)]) == 2
    err = capsys.readouterr().err
    assert str(dst) in err and "--force" in err and "Traceback" not in err, err
    assert dst.read_bytes() == b"mine"
    assert cli(["convert", str(pth), str(dst), "--force"]) == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(dst))["a"], torch.arange(4.0))
    assert stat.S_IMODE(dst.stat().st_mode) == 0o644  # not safetensors' 0600


def test_convert_folder_checks_every_target_first_and_cleans_up_on_a_full_disk(pth, tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.pth", "b.pth"):
        (src / name).write_bytes(pth.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.safetensors").write_bytes(b"mine")
    assert cli(["convert", str(src), str(out)]) == 2
    assert "b.safetensors" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["b.safetensors"]  # a.safetensors was not written either
    (out / "b.safetensors").unlink()
    import safetensors.torch as st

    real = st.save_file
    done = []

    def full(tensors, filename, *a, **k):
        if done:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        done.append(filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(st, "save_file", full)
    assert cli(["convert", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "Traceback" not in err, err
    assert done and list(out.iterdir()) == []  # the first file, written, is removed again


def test_convert_refuses_a_text_file(tmp_path, capsys):
    txt = tmp_path / "notes.pth"
    txt.write_text("these are not weights\n" * 20)
    assert cli(["convert", str(txt), str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "not a PyTorch weight file" in err and "Traceback" not in err, err
    assert not (tmp_path / "o.safetensors").exists()


def test_download_never_replaces_a_file_that_is_there(tmp_path, monkeypatch):
    """A component reported missing (here: the VAE, by a stand-in of the file lookup) gets only its absent files;
    the present one is replaced only with force."""
    import huggingface_hub

    import echomimic_lib.model_set as dl
    from echomimic_lib.errors import MissingWeightsError

    vae = tmp_path / "sd-vae-ft-mse"
    vae.mkdir()
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"user's vae")
    fetched = []

    def lookup(root, weights, variant, **kw):
        if not (vae / "config.json").exists():
            err = MissingWeightsError("vae missing", ["sd-vae-ft-mse/"])
            err.details = [{"component": "vae"}]
            raise err
        return {"vae": vae}

    def fake(repo_id, filename, local_dir):
        fetched.append(filename)
        Path(local_dir, filename).write_bytes(b"downloaded")
        return str(Path(local_dir, filename))

    monkeypatch.setattr(dl, "resolve_files", lookup)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    assert dl.ensure_weights(tmp_path, "v1_audio") == {"vae": vae}
    assert fetched == ["config.json"]
    assert (vae / "diffusion_pytorch_model.safetensors").read_bytes() == b"user's vae"
    (vae / "config.json").unlink()
    dl.ensure_weights(tmp_path, "v1_audio", force=True)
    assert fetched[1:] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (vae / "diffusion_pytorch_model.safetensors").read_bytes() == b"downloaded"


# ------------------------------------------------------------------ sound track and permissions
def test_a_5_1_track_with_speech_in_the_centre_is_heard_in_the_video(tmp_path, shared_data, umask_022):
    import wave

    from echomimic_lib.io.audio_file import read_audio
    from echomimic_lib.io.video_io import write_video

    speech, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    speech = speech[0, : sr]  # 1 s
    six = np.zeros((6, speech.size), np.float32)
    six[2] = speech  # FL FR FC LFE BL BR: only the centre speaks
    wav = tmp_path / "surround.wav"
    with wave.open(str(wav), "wb") as w:  # 6-channel 16-bit PCM, interleaved
        w.setnchannels(6)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(six.T, -1, 1) * 32767).astype("<i2").tobytes())
    audio, rate = read_audio(wav)
    assert audio.shape[0] == 6
    out = write_video(tmp_path / "o.mp4", np.zeros((25, 64, 64, 3), np.uint8), 25, audio, rate)
    track, _ = read_audio(out)
    assert track.shape[0] == 2
    n = min(track.shape[1], speech.size)
    for ch in track:  # both sides carry the speech (at -3 dB), not the silent front pair
        assert np.sqrt(np.mean(ch[:n] ** 2)) > 0.5 * 0.7071 * np.sqrt(np.mean(speech[:n] ** 2))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # the umask's mode, not mkstemp's 0600


def test_lora_and_weight_files_get_the_umask_mode(tmp_path, umask_022):
    from echomimic_lib.lora import LoraInfo, write_lora
    from echomimic_lib.io.weights import save_state_dict

    st = save_state_dict({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert stat.S_IMODE(st.stat().st_mode) == 0o644
    lora = write_lora(tmp_path / "a.safetensors", {"x.lora_A.weight": torch.zeros(2, 2)}, LoraInfo(weights="v1_audio"))
    assert stat.S_IMODE(lora.stat().st_mode) == 0o644
    os.umask(0o077)
    private = save_state_dict({"a": torch.zeros(2)}, tmp_path / "p.safetensors")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600  # a strict umask is kept as well


# ------------------------------------------------------------------ resume never runs code
class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class _Counter:
    def __init__(self):
        self.n = 3

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, d):
        self.n = int(d["n"])


def _accelerate_checkpoint(folder: Path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model, opt = acc.prepare(model, opt)
    counter = _Counter()
    acc.register_for_checkpointing(sched, counter)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    acc.save_state(str(folder), safe_serialization=True)
    return acc, counter


def test_resume_reads_every_checkpoint_file_weights_only(tmp_path):
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint, weights_only_loading

    ckpt = tmp_path / "step-00000001"
    acc, counter = _accelerate_checkpoint(ckpt)
    names = {p.name for p in check_checkpoint(ckpt)}  # the real files (RNG, optimizer, scheduler, objects) pass
    assert {"optimizer.bin", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"} <= names  # 0: LR sched
    counter.n = 0
    with weights_only_loading():
        acc.load_state(str(ckpt))
    assert counter.n == 3

    marker = tmp_path / "payload-ran"
    torch.save({"n": _Payload(marker)}, ckpt / "custom_checkpoint_1.pkl")
    with pytest.raises(UnsafeCheckpointError, match="custom_checkpoint_1.pkl: refused to load"):
        check_checkpoint(ckpt)
    with pytest.raises(pickle.UnpicklingError), weights_only_loading():  # accelerate itself asks for weights_only=False
        acc.load_state(str(ckpt))
    assert not marker.exists()
    (ckpt / "custom_checkpoint_1.pkl").write_bytes(pickle.dumps(_Payload(marker)))  # a plain pickle, not a torch file
    with pytest.raises(UnsafeCheckpointError, match="custom_checkpoint_1.pkl"):
        check_checkpoint(ckpt)
    assert not marker.exists()


def test_fit_resume_refuses_a_tampered_run_folder_before_building(tmp_path, capsys, monkeypatch):
    import yaml

    from trainer.cli import main

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "step-00000001"
    _accelerate_checkpoint(ckpt)
    (ckpt / "meta.json").write_text('{"step": 1}')
    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), ckpt / "random_states_0.pkl")
    monkeypatch.setattr("trainer.init.build", lambda *a, **k: pytest.fail("built before the checkpoint was checked"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"preset": "v1_stage1", "output_dir": str(run), "model": {"init": "echomimic", "echomimic_path": str(tmp_path), "weights": "v1_pose"},
                                   "data": {"roots": [str(tmp_path)]}, "loss": {"spatial": {"lpips": 0.0}}}))
    assert main(["fit", "--config", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt / "random_states_0.pkl") in err and "refused to load" in err and "Traceback" not in err, err
    assert not marker.exists()


# ------------------------------------------------------------------ export
def _fake_checkpoint(folder: Path, lora: bool = False) -> Path:
    """A checkpoint folder as fit writes it, with a few tensors (no network needed to export or refuse)."""
    import json

    from safetensors.torch import save_file

    ckpt = folder / "run" / "checkpoints" / "step-00000002"
    ckpt.mkdir(parents=True)
    state = {"reference.a": torch.ones(2), "denoiser.b": torch.ones(2), "denoiser.x.motion_modules.c": torch.ones(2),
             "cond_encoder.d": torch.ones(2)}
    if lora:
        state = {"denoiser.q.lora_A.default.weight": torch.ones(2, 4), "denoiser.q.lora_B.default.weight": torch.zeros(4, 2)}
    save_file(state, str(ckpt / "model.safetensors"))
    meta = {"step": 2, "weights": "v1_audio", "echo_config": {}, "vae_path": str(folder), "whisper_path": str(folder),
            "lora": {"rank": 2, "alpha": 2.0, "use_rslora": False, "targets": ["q"], "networks": ["denoiser"],
                     "base": {"variant": "normal", "path": str(folder), "weights": "v1_audio", "fingerprint": {}}} if lora else None}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_export_never_overwrites_without_force(tmp_path, capsys, lora):
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, lora)
    dest = tmp_path / "out"
    dest.mkdir()
    mine = dest / ("run-step2.safetensors" if lora else "denoising_unet.pth")
    mine.write_bytes(b"mine")
    assert main(["export", str(ckpt), str(dest), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "--force" in err and "Traceback" not in err, err
    assert mine.read_bytes() == b"mine" and [p.name for p in dest.iterdir()] == [mine.name]


def test_export_on_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    import trainer.export as ex
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path)
    monkeypatch.setattr(ex.EchoConfig, "from_dict", staticmethod(lambda d: None))
    real, calls = ex.save_state_dict, []

    def full(state, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(state, path)

    monkeypatch.setattr(ex, "save_state_dict", full)
    dest = tmp_path / "new" / "out"
    assert main(["export", str(ckpt), str(dest), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "no space left" in err and "Traceback" not in err, err
    assert len(calls) == 3 and not (tmp_path / "new").exists()


def test_lora_export_to_an_unwritable_path_is_explained(tmp_path, capsys):
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, lora=True)
    target = Path("/proc/echomimic-nowhere/adapter.safetensors")  # refused even for root
    assert main(["export", str(ckpt), str(target)]) == 2
    err = capsys.readouterr().err
    assert "/proc/echomimic-nowhere" in err and "Traceback" not in err, err


def test_the_same_frames_give_the_same_mp4_bytes_in_two_processes(tmp_path):
    """A fixed x264 thread count, not one that follows the machine's cores: for this content (random noise, 96 px) the
    bytes are the same in two processes. Not a promise for every content: see the note in video_writer._open."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from echomimic_lib.io.video_io import write_video; "
            "rng = np.random.default_rng(7); f = rng.integers(0, 255, (16, 96, 96, 3), dtype=np.uint8); "
            "a = (0.1 * rng.standard_normal((2, 24000))).astype(np.float32); write_video(sys.argv[1], f, 24, a, 24000)")
    root = Path(__file__).resolve().parents[1]
    for name in ("a.mp4", "b.mp4"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, cwd=root, timeout=120)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_mediapipe_native_log_lines_stay_off_the_terminal(shared_data):
    """MediaPipe's C++ lines (graph creation, the XNNPACK delegate, the first detection) are held back in every command
    that tracks faces (dub, evaluate, prepare all use the extractor); a Python warning in between still shows."""
    import subprocess
    import sys

    code = ("import sys, warnings, cv2; from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor; "
            "img = cv2.imread(sys.argv[1])[..., ::-1]; ex = FaceLandmarkExtractor(model_path=sys.argv[2]); "
            "n = [len(ex.detect(img)) for _ in range(3)]; ex.close(); print(n); warnings.warn('still shown')")
    r = subprocess.run([sys.executable, "-c", code, str(shared_data / "images" / "portrait_a.png"),
                        str(shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task")],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "[1, 1, 1]", r.stdout + r.stderr
    assert "still shown" in r.stderr
    for native in ("W0000", "XNNPACK", "InitGoogle", "inference_feedback_manager"):
        assert native not in r.stderr, r.stderr


def test_the_docs_quote_no_path_of_one_machine():
    root = Path(__file__).resolve().parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = doc.read_text()
        for private in ("/work/", "/home/", "/root/", "/Users/", "C:\\Users"):
            assert private not in text, f"{doc.name} quotes a development machine's path ({private})"


def test_export_ema_refuses_a_tampered_checkpoint_file(tmp_path, capsys):
    import json

    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "ema_index": 0, "param_names": ["reference.a"]}))
    marker = tmp_path / "payload-ran"
    torch.save({"shadow_params": [_Payload(marker)]}, ckpt / "custom_checkpoint_0.pkl")
    assert main(["export", str(ckpt), str(tmp_path / "out"), "--ema", "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt / "custom_checkpoint_0.pkl") in err and "refused to load" in err and "Traceback" not in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()
