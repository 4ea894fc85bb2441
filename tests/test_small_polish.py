"""Small user-facing fixes: V3 reference message, long V3 prompts, the V3 audio cut, export and download errors."""
import pytest


def test_v3_reference_not_found_names_v3(tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.reference_input import read_reference

    with pytest.raises(EchoMimicError) as info:
        read_reference(tmp_path / "missing.png", version="v3")
    msg = str(info.value)
    assert "file not found" in msg and "V3" in msg and "(V1)" not in msg and "(V2)" not in msg
    with pytest.raises(EchoMimicError) as info:
        read_reference(tmp_path, version="v3")
    assert "is a folder" in str(info.value) and "(V2)" not in str(info.value)
    with pytest.raises(EchoMimicError) as info:  # V1/V2 keep their wording
        read_reference(tmp_path / "missing.png")
    assert "half-body (V2)" in str(info.value)


def test_plan_v3_reference_message(tmp_path):
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.v3_plan import V3Request, plan_v3

    req = V3Request(reference=str(tmp_path / "nope.png"), audio=str(tmp_path / "a.wav"), output=str(tmp_path / "o.mp4"),
                    models=str(tmp_path / "m"))
    with pytest.raises(EchoMimicError) as info:
        plan_v3(req)
    assert "--reference" in str(info.value) and "V3" in str(info.value) and "(V2)" not in str(info.value)


def _tiny_v3(tmp_path):
    from echomimic_lib.models.wan.tiny import write_tiny_v3

    return write_tiny_v3(tmp_path / "tiny")


def test_long_v3_prompt_is_named_before_umt5_loads_and_on_a_cached_run(tmp_path, monkeypatch, caplog):
    """A prompt past umT5's 512 tokens: a warning naming how many are dropped, before the encoder's weights load (and
    again when the cached states are reused); the states are those of the first 512 tokens, as before."""
    import logging

    import torch
    import transformers

    from echomimic_lib.pipeline.wan import encoders

    umt5 = _tiny_v3(tmp_path) / "umt5-xxl"
    long_prompt = " ".join(["a woman is speaking ."] * 120)  # 600 words: 88 past the 512
    cache = tmp_path / "cache"
    real = transformers.UMT5EncoderModel.from_pretrained
    seen = []

    def spy(*a, **k):
        seen.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
        return real(*a, **k)

    monkeypatch.setattr(transformers.UMT5EncoderModel, "from_pretrained", spy)
    with caplog.at_level(logging.WARNING):
        states = encoders.encode_prompt(umt5, long_prompt, cache_dir=cache)
    assert seen and any("88 tokens" in m and "512" in m for m in seen[0])  # said before the model loaded
    assert states.shape[1] == 512
    tok, model = encoders.load_umt5(umt5)
    ids = tok([long_prompt], padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = model(ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state.float()
    assert torch.equal(states, want)  # outputs unchanged: the first 512 tokens
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = encoders.encode_prompt(umt5, long_prompt, cache_dir=cache)
    assert torch.equal(again, states) and any("88 tokens" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encoders.encode_prompt(umt5, "a man is talking .", cache_dir=cache)
    assert not [r for r in caplog.records if "tokens" in r.getMessage()]


def test_encode_prompts_warns_before_loading(tmp_path, monkeypatch, caplog):
    import logging

    import torch
    import transformers

    from echomimic_lib.jobs.animate_v3 import encode_prompts

    umt5 = _tiny_v3(tmp_path) / "umt5-xxl"
    long_prompt = " ".join(["the man is talking ."] * 110)  # 550 words: 38 past the 512

    def boom(*a, **k):
        raise RuntimeError("no model load in this test")

    monkeypatch.setattr(transformers.UMT5EncoderModel, "from_pretrained", boom)
    with caplog.at_level(logging.WARNING), pytest.raises(Exception):
        encode_prompts(umt5, ["a person is speaking .", long_prompt], tmp_path / "c", "cpu", torch.float32)
    assert [r.getMessage() for r in caplog.records if "38 tokens" in r.getMessage()]


# ------------------------------------------------------------------------------------------ 4. the destination named
def _full(name):
    import errno

    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", name() if callable(name) else name)
    return fail


def test_a_full_disk_names_the_destination_not_the_removed_temporary_file(tmp_path, monkeypatch):
    import errno

    import torch

    from echomimic_lib.io import file_safety, weights

    dest = tmp_path / "denoising_unet.pth"
    monkeypatch.setattr(weights, "_write_weights", lambda state, tmp, suffix: _full(str(tmp))())
    with pytest.raises(OSError) as info:
        weights.save_state_dict({"w": torch.zeros(2)}, dest)
    assert info.value.os_errno == errno.ENOSPC and ".partial" not in str(info.value)  # an OSError still (callers catch it)
    assert str(info.value).startswith(f"cannot write {dest}: no space left on the disk")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(file_safety.Path, "write_text", lambda self, *a, **k: _full(str(self))())
    with pytest.raises(OSError) as info:
        file_safety.write_text_atomic(tmp_path / "inference_config.json", "{}")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'inference_config.json'}: ")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_names_the_destination(tmp_path, monkeypatch):
    import errno

    from echomimic_lib.io import file_safety

    tmp = tmp_path / ".x.abc.partial"
    tmp.write_text("x")
    monkeypatch.setattr(file_safety.os, "replace", lambda a, b: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(a), None, str(b))))
    with pytest.raises(OSError) as info:
        file_safety.publish(tmp, tmp_path / "x.json")
    assert str(info.value).startswith(f"cannot write {tmp_path / 'x.json'}: permission denied")


def test_the_trainer_says_the_destination(tmp_path, monkeypatch, capsys):
    import torch

    from echomimic_lib.io import weights
    from trainer.cli import _os_error

    dest = tmp_path / "out" / "motion_module.pth"
    dest.parent.mkdir()
    monkeypatch.setattr(weights, "_write_weights", lambda state, tmp, suffix: _full(str(tmp))())
    try:
        weights.save_state_dict({"w": torch.zeros(2)}, dest)
    except OSError as exc:
        assert _os_error(exc) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {dest}: no space left on the disk") and ".partial" not in err
    assert err.count("Nothing partial was kept") == 1 and "cannot use" not in err


# ------------------------------------------------------------------------------------------ 5. a failed download
def test_a_download_on_a_full_disk_is_one_line_with_the_file_and_the_fix(tmp_path, monkeypatch):
    import errno

    import huggingface_hub

    from echomimic_lib.errors import MissingWeightsError
    from echomimic_lib.io.hub import HubFile, fetch

    root = tmp_path / "models"

    def full(repo_id, filename, local_dir):
        raise OSError(errno.ENOSPC, "No space left on device", f"{local_dir}/.cache/huggingface/download/x.incomplete")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", full)
    dest = root / "v3-flash" / "umt5-xxl" / "model.safetensors"
    with pytest.raises(MissingWeightsError) as info:
        fetch([HubFile("org/repo", "model.safetensors", dest)], root, "missing files:\n  a\n  b")
    msg = str(info.value)
    assert "\n" not in msg and str(dest) in msg and "no space left on the disk" in msg and "free some space" in msg
    assert "Errno" not in msg and "incomplete" not in msg and "OSError" not in msg
    assert info.value.missing == [str(dest)]  # still the error the callers handle
    assert sorted(p.name for p in root.iterdir()) == []  # the staging folder is gone


def test_a_network_failure_keeps_its_full_message(tmp_path, monkeypatch):
    import huggingface_hub

    from echomimic_lib.errors import MissingWeightsError
    from echomimic_lib.io.hub import HubFile, fetch

    def offline(repo_id, filename, local_dir):
        raise ConnectionError("cannot reach huggingface.co")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(MissingWeightsError) as info:
        fetch([HubFile("org/repo", "m.bin", tmp_path / "m" / "m.bin")], tmp_path / "m", "missing files:\n  m.bin")
    assert "HF_ENDPOINT" in str(info.value) and "cannot reach" in str(info.value)


def test_a_models_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    import errno
    import tempfile

    from echomimic_lib.errors import MissingWeightsError
    from echomimic_lib.io import hub

    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "m" / ".echomimic-download-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", ro)
    with pytest.raises(MissingWeightsError) as info:
        hub.fetch([hub.HubFile("o/r", "a.bin", tmp_path / "m" / "a.bin")], tmp_path / "m", "missing:\n  a.bin")
    msg = str(info.value)
    assert "\n" not in msg and f"cannot write into {tmp_path / 'm'}: the file system is read-only" in msg
