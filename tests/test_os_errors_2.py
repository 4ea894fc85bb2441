"""OS refusals, round 2: one wording from one helper for every reader and writer. A write the system refuses (a full
disk, a quota, permissions, a read-only disk) -- or that torch.save / safetensors cannot finish, which they report
without the path (torch: a RuntimeError; safetensors: a SafetensorError quoting "(os error 28)") -- says
``cannot write PATH: <what the system said>; <fix>.`` and that nothing partial was kept; the temporary file is gone
and a file that was there is unchanged. Full disks are simulated (monkeypatch)."""
from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from echomimic_lib.errors import EchoMimicError, WeightsError

# what torch 2.x raises from torch.save on a full disk (measured on a 64 kB tmpfs), and what older versions said
TORCH_FULL = ["[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534",
              "[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing file data/0: file write failed"]
ST_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors, same tmpfs


def _safetensor_error():
    from safetensors import SafetensorError

    return SafetensorError(ST_FULL)


def _leftovers(folder: Path, keep: set) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ------------------------------------------------------------------------------------------ the helpers
def test_refused_is_the_one_reader_wording_and_none_for_other_errors():
    from echomimic_lib.io.os_errors import refused

    err = refused(PermissionError(errno.EACCES, "Permission denied", "/x"), "/in/a.png", before="--reference: ")
    assert type(err) is EchoMimicError
    assert str(err) == ("--reference: cannot read /in/a.png: permission denied; check the permissions of the file and "
                        "of its folder, or choose another path.")
    more = refused(OSError(errno.ENOSPC, "x"), "/m/a.pth", "download", lambda m: WeightsError(m), then=", then again")
    assert isinstance(more, WeightsError) and str(more).endswith("another disk, then again.")
    assert refused(OSError(errno.EINVAL, "codec"), "/in/a.mp4") is None and refused(ValueError("x"), "/a") is None


@pytest.mark.parametrize("exc, said", [
    (OSError(errno.ENOSPC, "No space left on device", "/o/.x.partial"), "no space left on the disk; free some space"),
    (OSError(getattr(errno, "EDQUOT", errno.ENOSPC), "Disk quota exceeded"), "; free some space"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied; check the permissions"),
    (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only; choose a folder on a writable disk"),
    (RuntimeError(TORCH_FULL[0]), "the write stopped part way (most often a full disk"),
    (RuntimeError(TORCH_FULL[1]), "the write stopped part way (most often a full disk"),
])
def test_every_refused_write_says_cannot_write_the_destination_in_one_form(exc, said):
    from echomimic_lib.io.file_safety import disk_full
    from echomimic_lib.io.os_errors import WriteError, write_refused

    err = write_refused(exc, "/o/x.pth")
    assert isinstance(err, WriteError) and isinstance(err, EchoMimicError) and isinstance(err, OSError)
    msg = str(err)
    assert msg.startswith("cannot write /o/x.pth: ") and said in msg and "Nothing partial was kept" in msg, msg
    assert ".partial" not in msg and "\n" not in msg and err.errno is None  # the CLIs print it as it is
    assert disk_full(err) == (getattr(exc, "errno", None) in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)))
    assert write_refused(RuntimeError("CUDA error: out of memory"), "/o/x.pth") is None
    assert write_refused(_safetensor_error(), "/o/x.st").os_errno == errno.ENOSPC


# ------------------------------------------------------------------------------------------ weight files
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_weight_file_on_a_full_disk_is_named_and_the_earlier_one_kept(tmp_path, monkeypatch, suffix):
    import safetensors.torch

    from echomimic_lib.io import weights

    path = weights.save_state_dict({"w": torch.ones(2)}, tmp_path / f"m{suffix}")
    before = path.read_bytes()

    def full(*a, **k):
        raise RuntimeError(TORCH_FULL[0]) if suffix == ".pth" else _safetensor_error()

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(EchoMimicError) as info:  # was a bare RuntimeError / SafetensorError without the path
        weights.save_state_dict({"w": torch.zeros(2)}, path)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {path}: ") and "free some space" in msg and "Nothing partial was kept" in msg
    assert path.read_bytes() == before and _leftovers(tmp_path, {path.name}) == []


def test_convert_on_a_full_disk_says_which_file_without_a_traceback(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    from echomimic_lib.cli import main
    from echomimic_lib.io.weights import save_state_dict

    src = save_state_dict({"w": torch.ones(2)}, tmp_path / "a.pth")
    out = tmp_path / "out"

    def full(*a, **k):
        raise _safetensor_error()

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert main(["convert", str(src), str(out / "a.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'a.safetensors'}: no space left on the disk; free some space" in err, err
    assert "Traceback" not in err and "Nothing partial was kept" in err and not out.exists()


def test_make_tiny_refused_says_cannot_write_into_the_folder(tmp_path):
    from echomimic_lib.cli.weights import _write_failed
    from echomimic_lib.io.os_errors import write_refused

    staged = write_refused(OSError(errno.EACCES, "Permission denied"), tmp_path / ".tiny-abc" / "v1" / "x.pth")
    staged.__cause__ = OSError(errno.EACCES, "Permission denied")
    msg = str(_write_failed(staged, tmp_path / "models", "write into"))
    assert msg.startswith(f"cannot write into {tmp_path / 'models'}: permission denied; check the permissions"), msg
    assert ".tiny-" not in msg  # the staging folder it was removed with is never named


# ------------------------------------------------------------------------------------------ LoRA files
def _lora(tmp_path):
    from echomimic_lib.lora.files import LoraInfo

    info = LoraInfo(weights="v1_audio", rank=2, alpha=2.0, targets=["to_q"])
    tensors = {"denoiser.a.to_q.lora_A.weight": torch.ones(2, 4), "denoiser.a.to_q.lora_B.weight": torch.zeros(4, 2)}
    return tensors, info


def test_a_lora_file_on_a_full_disk_is_named_and_the_earlier_one_kept(tmp_path, monkeypatch):
    import safetensors.torch

    from echomimic_lib.lora.files import write_lora

    tensors, info = _lora(tmp_path)
    path = write_lora(tmp_path / "a.safetensors", tensors, info)
    before = path.read_bytes()

    def full(*a, **k):
        raise _safetensor_error()

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(EchoMimicError, match=rf"^cannot write {path}: no space left on the disk; free some space"):
        write_lora(path, tensors, info)
    assert path.read_bytes() == before and _leftovers(tmp_path, {path.name}) == []


def test_a_peft_export_on_a_full_disk_names_its_folder_and_leaves_none(tmp_path, monkeypatch):
    pytest.importorskip("peft")
    import safetensors.torch

    from echomimic_lib.lora import read_lora, write_peft
    from echomimic_lib.lora.files import write_lora

    tensors, info = _lora(tmp_path)
    path = write_lora(tmp_path / "a.safetensors", tensors, info)

    def full(*a, **k):
        raise _safetensor_error()

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(EchoMimicError) as info_:  # was a bare SafetensorError: a traceback from echomimic-train export
        write_peft(read_lora(path), tmp_path / "a-peft")
    msg = str(info_.value)
    assert msg.startswith(f"cannot write {tmp_path / 'a-peft' / 'denoiser'}: no space left on the disk"), msg
    assert not [p for p in tmp_path.rglob("*") if "partial" in p.name]


# ------------------------------------------------------------------------------------------ trainer checkpoints
class _Acc:
    distributed_type = "NO"
    is_main_process = is_local_main_process = True
    project_configuration = SimpleNamespace(save_on_each_node=False)

    def __init__(self, fail=None):
        self.fail = fail

    def wait_for_everyone(self):
        pass

    def save_state(self, path, safe_serialization=True):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"half" if self.fail else b"whole")
        if self.fail:
            raise self.fail


@pytest.mark.parametrize("fail", [RuntimeError(TORCH_FULL[1]), "safetensors"])
def test_a_checkpoint_on_a_full_disk_names_it_and_keeps_the_earlier_ones(tmp_path, fail):
    from trainer.checkpoint import save_checkpoint

    first = save_checkpoint(_Acc(), tmp_path, 100, {}, keep_last=3)
    fail = _safetensor_error() if fail == "safetensors" else fail
    with pytest.raises(EchoMimicError) as info:  # was torch's bare RuntimeError: a traceback without the path
        save_checkpoint(_Acc(fail), tmp_path, 200, {}, keep_last=3)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {tmp_path / 'checkpoints' / 'step-00000200'}: ") and "free some space" in msg
    assert "the earlier checkpoints are as they were" in msg and "--resume" in msg
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]
    assert (first / "model.safetensors").read_bytes() == b"whole"


def test_the_trainer_prints_a_refused_write_as_it_is(tmp_path, monkeypatch, capsys):
    from trainer import cli

    def full(args):
        from trainer.checkpoint import save_checkpoint

        save_checkpoint(_Acc(RuntimeError(TORCH_FULL[0])), tmp_path, 5, {}, keep_last=1)

    monkeypatch.setattr(cli, "build_parser", lambda: SimpleNamespace(parse_args=lambda argv: SimpleNamespace(
        func=full, command="fit", verbose=False)))
    assert cli._main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmp_path / 'checkpoints' / 'step-00000005'}: the write stopped part way")
    assert err.count("\n") == 1 and "Traceback" not in err and "cannot use" not in err


# ------------------------------------------------------------------------------------------ caches, text, video, nodes
def test_a_latent_cache_on_a_full_disk_names_the_cache_not_its_staging_folder(tmp_path, monkeypatch):
    from tests.test_trainer_latent_cache import synthetic_dataset, tiny_vae
    from trainer.data import latent_cache as lc
    from trainer.data.store import read_manifest

    entries = read_manifest(synthetic_dataset(tmp_path / "ds", frames=4))
    vae = tiny_vae(tmp_path / "vae")
    key = lc.cache_key(tmp_path / "vae", 64, 64, vae.dtype)

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(lc.np, "save", full)
    with pytest.raises(EchoMimicError) as info:
        lc.write_clip_cache(entries[0], vae, key, 64, 64)
    final = lc.cache_dir(entries[0].path, key)
    assert str(info.value).startswith(f"cannot write {final}: no space left on the disk"), str(info.value)
    assert not final.exists() and not [p for p in final.parent.iterdir() if lc.PARTIAL in p.name]


def test_a_text_file_refused_says_cannot_write_it(tmp_path, monkeypatch):
    from echomimic_lib.io import file_safety

    real = Path.write_text

    def denied(self, *a, **k):
        if self.name.endswith(".partial"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", denied)
    final = tmp_path / "a.json"
    with pytest.raises(EchoMimicError, match=rf"^cannot write {final}: permission denied; check the permissions"):
        file_safety.write_text_atomic(final, "{}")  # was a PermissionError: "cannot use ..." from the CLIs
    assert list(tmp_path.iterdir()) == []


def test_a_video_write_refused_says_cannot_write_it(tmp_path):
    from echomimic_lib.io.video_writer import Mp4Writer, OutputError

    out = tmp_path / "o.mp4"
    w = Mp4Writer(out, 24)
    w.write(np.zeros((1, 16, 16, 3), np.uint8))

    class Refusing:
        def __init__(self, c):
            self.c = c

        def mux(self, packet):
            raise PermissionError(errno.EACCES, "Permission denied")

        def __getattr__(self, name):
            return getattr(self.c, name)

    w._container = Refusing(w._container)
    with pytest.raises(OutputError) as info:
        w.commit()  # the encoder's buffered frames are written now
    msg = str(info.value)
    assert msg.startswith(f"cannot write {out}: permission denied; check the permissions"), msg
    assert "Nothing partial was kept" in msg and list(tmp_path.iterdir()) == []


def test_a_node_output_folder_refused_says_cannot_write_it(tmp_path, monkeypatch):
    from tests._pack import sub

    bridge = sub("nodes.comfy_bridge")
    monkeypatch.setattr(bridge, "folder_paths", None)
    monkeypatch.setattr(bridge, "output_dir", lambda: tmp_path)

    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(Exception) as info:
        bridge.save_path("clips/run", "mp4")
    assert type(info.value).__name__ == "EchoMimicError"
    assert str(info.value) == (f"filename_prefix 'clips/run': cannot write {tmp_path / 'clips'}: permission denied; "
                               "check the permissions of the file and of its folder, or choose another path.")


# ------------------------------------------------------------------------------------------ a spare cache
class _Tok:
    def __call__(self, texts, **k):
        return SimpleNamespace(input_ids=torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 3))


class _Umt5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, ids, attention_mask=None):
        return SimpleNamespace(last_hidden_state=torch.full((1, ids.shape[1], 4), 2.0))


@pytest.mark.parametrize("where", ["save", "folder"])
def test_a_prompt_cache_the_disk_refuses_is_said_and_the_render_goes_on(tmp_path, monkeypatch, caplog, where):
    import logging

    import safetensors.torch

    from echomimic_lib.pipeline.wan import encoders

    cache = tmp_path / "models" / "prompt_cache"
    if where == "save":
        def full(*a, **k):
            raise _safetensor_error()

        monkeypatch.setattr(safetensors.torch, "save_file", full)
    else:
        real = Path.mkdir

        def read_only(self, *a, **k):
            if self == cache:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, *a, **k)

        monkeypatch.setattr(Path, "mkdir", read_only)
    with caplog.at_level(logging.WARNING):  # was a SafetensorError traceback / a stopped V3 render
        states = encoders.encode_prompt(tmp_path / "umt5", "a man is talking .", cache_dir=cache, encoder=(_Tok(), _Umt5()))
    assert torch.equal(states, torch.full((1, 3, 4), 2.0))
    said = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(said) == 1 and str(cache) in said[0] and "the render goes on" in said[0], said
    assert ("no space left on the disk" if where == "save" else "the file system is read-only") in said[0]
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.parametrize("version", ["v1", "v3-flash"])
def test_make_tiny_on_a_full_disk_says_so_without_a_traceback(tmp_path, monkeypatch, capsys, version):
    import safetensors.torch

    from echomimic_lib.cli import main

    def full(*a, **k):  # torch's and safetensors' own errors, as on a real full disk (the whisper file: torch.save)
        raise RuntimeError(TORCH_FULL[0]) if version == "v1" else _safetensor_error()

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    d = tmp_path / "models"
    assert main(["make-tiny", str(d), "--version", version]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write into {d}: ") and "free some space" in err and "Traceback" not in err, err


def test_an_output_folder_the_system_refuses_is_said_in_the_one_form(tmp_path, monkeypatch):
    import tempfile

    from echomimic_lib.io.video_writer import OutputError, check_output_path

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".echomimic-write-test.x"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError) as info:
        check_output_path(tmp_path / "out.mp4", "-o")
    assert str(info.value) == f"cannot write into {tmp_path}: the file system is read-only; choose a folder on a writable disk."
