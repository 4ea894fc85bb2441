"""Studio batches and HTTP-API queuers, round 5: row names in any script become file names that keep their letters
(one rule for ``echomimic batch`` and ``echomimic queue``), one ``cuda:N`` parser, and what a queuer meets on a real
ComfyUI (no server, a restart, a rejected prompt, a 500, a failed execution, Ctrl-C), against a stand-in server."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.io.file_names import safe_file_name
from tests._media import write_wav


@pytest.fixture
def folder(tmp_path, shared_data):
    (tmp_path / "anna.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    t = np.arange(8000) / 16000
    write_wav(tmp_path / "en.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return tmp_path


def _manifest(folder: Path, names: list[str]) -> Path:
    path = folder / "jobs.jsonl"
    rows = [{"name": n, "reference": "anna.png", "audio": "en.wav"} for n in names]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _names(folder: Path, names: list[str]) -> list[str]:
    from echomimic_lib.jobs.batch.manifest import read_manifest

    return [j.output.name for j in read_manifest(_manifest(folder, names), folder / "out")]


# --------------------------------------------------------------------------------------------------- row names
def test_names_in_any_script_keep_their_letters(folder):
    """'東京_take1' was written as '_take1.mp4' and 'Žofie' as 'ofie.mp4'; 'Анна' and 'Иван' both as 'job.mp4'."""
    names = ["東京_take1", "Žofie", "Анна", "Иван", "Ελένη", "मैं_हूँ", "José-2"]
    assert _names(folder, names) == [f"{unicodedata.normalize('NFC', n)}.mp4" for n in names]


def test_a_name_in_nfd_is_the_nfc_file_and_collides_with_its_nfc_twin(folder):
    from echomimic_lib.jobs.batch.manifest import ManifestError

    nfd = unicodedata.normalize("NFD", "café")
    assert _names(folder, [nfd]) == ["café.mp4"] and unicodedata.is_normalized("NFC", _names(folder, [nfd])[0])
    with pytest.raises(ManifestError) as exc:  # macOS stores both as one file; refused, not one overwriting the other
        _names(folder, ["café", nfd])
    assert "line 2: name 'café' is also used on line 1" in str(exc.value)


@pytest.mark.parametrize("names, shown", [
    (["東京/a", "東京_a"], "name '東京_a' is file 東京_a.mp4, as is line 1's '東京/a'"),
    (["ÉCOLE", "école"], "name 'école' is also used on line 1 (names differing only in case"),
])
def test_names_equal_after_cleaning_or_in_case_are_refused_naming_both(names, shown, folder):
    from echomimic_lib.jobs.batch.manifest import ManifestError

    with pytest.raises(ManifestError) as exc:
        _names(folder, names)
    assert f"line 2: {shown}" in str(exc.value)


@pytest.mark.parametrize("text, expected", [
    ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
    ("tab\there\x00nul\x7f", "tab_here_nul"),
    ("ends with dots... ", "ends_with_dots"),
    ("CON", "_CON"), ("nul.take", "_nul.take"), ("COM¹", "_COM¹"), ("LPT9", "_LPT9"), ("COM10", "COM10"),
    ("   ", "job"), ("...", "job"),
])
def test_what_file_systems_refuse_is_replaced(text, expected):
    assert safe_file_name(text) == expected


def test_long_names_are_bounded_in_utf8_bytes_between_whole_letters(folder, tmp_path):
    long_cjk = "東" * 150  # 450 bytes: 'File name too long' when the finished video was moved into place
    name = safe_file_name(long_cjk)
    assert len((name + ".mp4").encode()) <= 255 and set(name) == {"東"}
    accented = "x" * 119 + "q\u0301" * 2  # q + accent has no one-letter form: the cut falls between q and its accent
    assert safe_file_name(accented) == "x" * 119  # the bare q goes too, not a different letter left behind
    assert safe_file_name("x" * 118 + "q\u0301" * 2) == "x" * 118 + "q\u0301"
    (tmp_path / (safe_file_name(long_cjk) + ".mp4")).write_bytes(b"")  # the OS takes it
    assert _names(folder, [long_cjk]) == [f"{safe_file_name(long_cjk)}.mp4"]
    assert safe_file_name("a" * 120) == "a" * 120 and safe_file_name("a" * 130) == "a" * 120  # ASCII names as before


def test_ascii_names_are_unchanged_so_finished_rows_stay_found(folder):
    assert _names(folder, ["anna_en", "take 1", "v2+acc.final", "-x-"]) == \
        ["anna_en.mp4", "take_1.mp4", "v2+acc.final.mp4", "-x-.mp4"]


# ------------------------------------------------------------------------------------------ queue output prefixes
def test_queue_prefixes_use_the_same_rule_and_stay_distinct(tmp_path):
    from echomimic_lib.jobs.queue_client import plan_jobs

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    for name in ("東京.png", "take:1.png", "take_1.png", "a" * 200 + ".png"):
        (faces / name).write_bytes(b"x")
    (speech / ("é" * 120 + ".wav")).write_bytes(b"x")
    prefixes = [j.prefix for j in plan_jobs(faces, speech)]
    assert len({p.casefold() for p in prefixes}) == 4
    assert all(len((p.split("/")[-1] + "_00001_.mp4").encode()) <= 255 for p in prefixes)  # ComfyUI's counter added
    assert any(p.startswith("echomimic/東京__") for p in prefixes) and not any(":" in p for p in prefixes)


# ------------------------------------------------------------------------------------------------------ --device
def test_the_batch_reads_cuda_n_as_the_single_commands_do(monkeypatch):
    """``--device CUDA:1`` is a device to ``echomimic animate`` (resolve_device) but the batch's own regex refused it
    ("use auto, cpu, cuda or a list"): one parser now, devices.parse_device, read for every name of the list."""
    import torch

    import echomimic_lib.devices as devices
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.batch.runner import BatchOptions, worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert worker_devices(BatchOptions(device="CUDA:1, Cuda:0")) == ["cuda:1", "cuda:0"]
    seen = []
    real = devices.parse_device
    monkeypatch.setattr(devices, "parse_device", lambda name: (seen.append(name), real(name))[1])
    assert worker_devices(BatchOptions(device="cuda:0,cuda:1")) == ["cuda:0", "cuda:1"] and seen == ["cuda:0", "cuda:1"]
    for device, words in (("cuda:0,mps", "'mps' is not a GPU; write each as cuda:N"),
                          ("cuda:01,cuda:1", "names cuda:1 twice"), ("cuda:0,cuda:7", "there is no cuda:7; this machine has 2")):
        with pytest.raises(EchoMimicError, match=words):
            worker_devices(BatchOptions(device=device))
