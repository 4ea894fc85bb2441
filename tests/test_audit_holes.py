"""Holes found by the code-execution / data-loss audit: each test fails without its fix."""
from __future__ import annotations

import pickle
import warnings

import pytest
import torch


def _global(module: str, name: str) -> bytes:
    """A protocol-4 STACK_GLOBAL of ``module`` / ``name`` (the name may be dotted)."""
    out = b""
    for text in (module, name):
        raw = text.encode()
        out += pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return out + pickle.STACK_GLOBAL


def _call(module: str, name: str, arg: str) -> bytes:
    raw = arg.encode()
    return (b"\x80\x04" + _global(module, name) + pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw + pickle.TUPLE1
            + pickle.REDUCE + pickle.STOP)


def _sharded_checkpoint(tmp_path):
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "step"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one process: torch.distributed.checkpoint says it saves without a group
        dcp.save({"model": {"w": torch.randn(3, 3), "b": torch.randn(2).bfloat16()}}, checkpoint_id=str(ckpt / "fsdp_0"))
    return ckpt


@pytest.mark.parametrize("module, name", [
    ("torch.distributed.checkpoint.metadata", "os.system"),  # a dotted name reaches the module's imports
    ("torch.distributed.checkpoint.filesystem", "pickle.loads"),
])
def test_resume_check_of_a_sharded_index_never_runs_its_code(tmp_path, module, name):
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint

    ckpt = _sharded_checkpoint(tmp_path)
    assert any(p.name == ".metadata" for p in check_checkpoint(ckpt))  # a real index passes
    marker = tmp_path / "ran"
    arg = f"touch {marker}" if name == "os.system" else "x"
    (ckpt / "fsdp_0" / ".metadata").write_bytes(_call(module, name, arg))
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        check_checkpoint(ckpt)
    assert not marker.exists()


def test_resume_check_refuses_functions_and_reader_classes_of_the_checkpoint_modules(tmp_path):
    from trainer.safe_resume import UnsafeCheckpointError, check_checkpoint

    ckpt = _sharded_checkpoint(tmp_path)
    for module, name in (("torch.distributed.checkpoint.filesystem", "FileSystemWriter"),
                         ("torch.distributed.checkpoint.state_dict_loader", "load")):
        (ckpt / "fsdp_0" / ".metadata").write_bytes(_call(module, name, str(tmp_path / "x")))
        with pytest.raises(UnsafeCheckpointError, match="refused to load"):
            check_checkpoint(ckpt)


@pytest.mark.parametrize("video_name", ["..mp4", "...mp4"])
def test_prepare_of_a_video_named_dots_never_removes_other_clips(tmp_path, video_name):
    """``echomimic-train prepare``: the clip id of '..mp4' was '.', of '...mp4' '..', so the clip's folder was the shard
    (or the dataset folder) and finishing the clip removed every clip prepared before it."""
    import numpy as np

    from trainer.data.prepare import clip_id
    from trainer.data.store import ClipWriter, shard_dir, shard_of

    src, out = tmp_path / "videos", tmp_path / "dataset"
    src.mkdir()
    (src / video_name).write_bytes(b"")
    cid = clip_id(src / video_name, src)
    shard = shard_dir(out, shard_of(cid, 1))
    earlier = shard / "earlier_clip"
    earlier.mkdir(parents=True)
    (earlier / "clip.json").write_text("{}")
    (out / "manifest.jsonl").write_text("")
    w = ClipWriter(shard / cid)  # as trainer.data.clip.write_clip places a clip
    w.add_frame(np.zeros((8, 8, 3), np.uint8))
    done = w.finish({"id": cid}, {})
    assert (earlier / "clip.json").is_file() and (out / "manifest.jsonl").is_file()  # the clips prepared before
    assert done.parent == shard and cid.strip(".")


def test_clip_writer_refuses_a_folder_above_its_shard(tmp_path):
    from trainer.data.store import ClipWriter

    (tmp_path / "shard-00000").mkdir()
    with pytest.raises(ValueError, match="name of its own"):
        ClipWriter(tmp_path / "shard-00000" / "..")
    assert (tmp_path / "shard-00000").is_dir()


def _jsonl(path, rows):
    import json

    for r in rows:  # the rows' inputs (only their names matter here)
        for key in ("reference", "audio"):
            (path.parent / r[key]).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / r[key]).write_bytes(b"")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_batch_names_differing_only_in_case_are_refused(tmp_path):
    """On Windows and macOS OUTDIR/Talk.mp4 and OUTDIR/talk.mp4 are one file: the second row's video replaced the
    first's, and results.jsonl recorded both as done."""
    from echomimic_lib.jobs.batch.manifest import ManifestError, read_manifest

    m = _jsonl(tmp_path / "rows.jsonl", [{"name": "Talk", "reference": "a.png", "audio": "a.wav"},
                                          {"name": "talk", "reference": "b.png", "audio": "b.wav"}])
    with pytest.raises(ManifestError, match="also used on line 1"):
        read_manifest(m, tmp_path / "out")
    m = _jsonl(tmp_path / "default.jsonl", [{"reference": "x/Alice.png", "audio": "hi.wav"},
                                             {"reference": "y/alice.png", "audio": "hi.wav"}])
    jobs = read_manifest(m, tmp_path / "out")  # default names: the repeat gets its line, as for an exact repeat
    assert len({j.request.output.lower() for j in jobs}) == 2


@pytest.mark.parametrize("name", ["CON", "nul", "Aux.take2", "com1", "LPT9"])
def test_batch_names_that_are_windows_devices_get_a_file_name(tmp_path, name):
    """A row named CON wrote OUTDIR/CON.mp4: on Windows that is the console, not a file (the render is lost)."""
    from echomimic_lib.jobs.batch.manifest import read_manifest

    m = _jsonl(tmp_path / "rows.jsonl", [{"name": name, "reference": "a.png", "audio": "a.wav"}])
    (job,) = read_manifest(m, tmp_path / "out")
    assert job.name == f"_{name}" and job.request.output == str(tmp_path / "out" / f"_{name}.mp4")
    m = _jsonl(tmp_path / "rows.jsonl", [{"name": f"my{name}", "reference": "a.png", "audio": "a.wav"}])
    assert read_manifest(m, tmp_path / "out")[0].name == f"my{name}"  # only the device names themselves


def _bomb_task(path, member: str, mib: int):
    """A .task-shaped zip: a landmarks model entry and ``member`` unpacking to ``mib`` MiB of zeros (about 1000:1)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("face_landmarks_detector.tflite", b"\0\0\0\0TFL3" + bytes(2048))
        with zf.open(member, "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(mib):
                fh.write(chunk)
    return path


def test_geometry_metadata_of_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """The face-geometry metadata was read whole (zf.read) into memory: a bundle whose entry unpacks to gigabytes
    took that much memory before anything was checked."""
    import tracemalloc

    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.landmarks.geometry import METADATA_NAME, load_metadata

    task = _bomb_task(tmp_path / "face_landmarker.task", METADATA_NAME, 96)
    assert task.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(EchoMimicError, match="zip bomb"):
            load_metadata(str(task))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB held while checking a 2 MB file"


def test_doctor_reports_a_zip_bomb_task_as_broken(tmp_path):
    """``echomimic doctor`` CRC-checked every member (testzip unpacks them all) and called such a bundle whole."""
    from echomimic_lib.jobs.doctor.detectors import task_problem

    task = _bomb_task(tmp_path / "face_landmarker.task", "face_blendshapes.tflite", 96)
    assert "zip bomb" in (task_problem(task) or "")


def test_the_real_landmarker_bundle_passes_both_checks(shared_data):
    from echomimic_lib.jobs.doctor.detectors import task_problem
    from echomimic_lib.landmarks.geometry import load_metadata

    task = shared_data / "mediapipe" / "face_landmarker_v2_with_blendshapes.task"
    assert task_problem(task) is None and len(load_metadata(str(task)).canonical) >= 468


def test_batch_into_a_folder_of_other_videos_refuses_before_replacing_them(tmp_path, shared_data, capsys):
    """``echomimic batch ... -o FOLDER`` replaced any FOLDER/<name>.mp4 already there (the user's own video, another
    command's render) without a word, where animate refuses an existing -o without --force."""
    import json

    from echomimic_lib.cli import main as cli
    from echomimic_lib.io.audio_file import read_audio
    from tests._media import write_wav

    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    write_wav(tmp_path / "speech.wav", wav[0, : int(0.5 * sr)], sr)
    (tmp_path / "anna.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"name": "keep", "reference": "anna.png", "audio": "speech.wav"}) + "\n")
    out = tmp_path / "videos"
    out.mkdir()
    (out / "keep.mp4").write_bytes(b"the user's own video")
    code = cli(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(out), "--smoke", "--offline", "-q", "--no-scores",
                "--models", str(tmp_path / "models"), "--threads", "1"])
    assert (out / "keep.mp4").read_bytes() == b"the user's own video"
    assert code == 2 and "keep.mp4 (line 1)" in capsys.readouterr().err and not (out / "results.jsonl").exists()


def test_convert_of_a_folder_never_writes_two_files_to_one_name(tmp_path):
    """``echomimic convert FOLDER OUT``: model.pth and model.bin both became OUT/model.safetensors, the second
    silently replacing the first (a loader then reads the wrong weights)."""
    from echomimic_lib.errors import WeightsError
    from echomimic_lib.io.weights import convert

    src = tmp_path / "weights"
    src.mkdir()
    torch.save({"w": torch.zeros(2)}, src / "model.pth")
    torch.save({"w": torch.ones(2)}, src / "model.bin")
    with pytest.raises(WeightsError, match="would both be converted to"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_failed_row_removes_only_its_own_partial_video(tmp_path):
    """Rows 'anna__hi' and 'anna__hi.take2' (audio hi.take2.wav): when the first failed, its clean-up pattern
    '.anna__hi.*.partial.mp4' also deleted the second's video being written on another worker, and that render was lost."""
    from types import SimpleNamespace

    from echomimic_lib.io.file_safety import temp_beside
    from echomimic_lib.jobs.batch.results import remove_partials

    mine = temp_beside(tmp_path / "anna__hi.mp4", ".partial.mp4")
    other = temp_beside(tmp_path / "anna__hi.take2.mp4", ".partial.mp4")
    assert remove_partials(SimpleNamespace(output=tmp_path / "anna__hi.mp4")) == 1
    assert not mine.exists() and other.is_file()
    assert remove_partials(SimpleNamespace(output=tmp_path / "anna__hi.take2.mp4")) == 1 and not other.exists()


def test_queue_over_several_servers_keeps_the_earlier_records_of_its_results_file(tmp_path):
    """``echomimic queue ... --server A --server B`` (results.jsonl in the current folder by default) rewrote that file
    with its own rows only: a batch's records there (what its rerun skips by) or an earlier queue run's were lost."""
    import json

    from echomimic_lib.jobs.queue_client import main as queue_main
    from tests.test_batch_queue import WORKFLOW

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    (faces / "anna.png").write_bytes(b"img")
    (speech / "hello.wav").write_bytes(b"aud")
    earlier = {"name": "anna_en", "status": "ok", "fingerprint": "f" * 64, "output": "renders/anna_en.mp4"}
    (tmp_path / "results.jsonl").write_text(json.dumps(earlier) + "\n")
    rc = queue_main([str(WORKFLOW), "--portraits", str(faces), "--audios", str(speech), "--server", "http://127.0.0.1:9",
                     "--server", "http://127.0.0.1:7", "--results", str(tmp_path)])
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rc == 1 and recs[0] == earlier and [r["status"] for r in recs[1:]] == ["error"]


def test_export_with_force_into_a_hard_linked_copy_leaves_the_original_model_alone(tmp_path, monkeypatch, capsys):
    """``echomimic-train export RUN DEST --force`` where DEST was made with ``cp -al base DEST`` (a hard-linked copy):
    the weights were replaced by new files, but the JSON configs were rewritten in place, so the base model's own
    inference_config.json / config.json changed (and a failure mid-write left them cut)."""
    import json
    import os

    from tests.test_output_is_input import write_training_checkpoint
    from trainer.cli import main

    base, dest = tmp_path / "base", tmp_path / "export"
    names = ("inference_config.json", "sd-image-variations-diffusers/unet/config.json", "export.json")
    for rel in names:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text('{"the base model": true}')
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(base / rel, dest / rel)
    vae, whisper = tmp_path / "vae", tmp_path / "whisper_tiny.pt"
    vae.mkdir()
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"vae")
    whisper.write_bytes(b"whisper")
    ckpt = write_training_checkpoint(tmp_path, vae, whisper, monkeypatch)
    assert main(["export", str(ckpt), str(dest), "--no-verify", "--force"]) == 0, capsys.readouterr().err
    assert all((base / rel).read_text() == '{"the base model": true}' for rel in names)
    assert json.loads((dest / "export.json").read_text())["step"] == 2


def test_a_sharded_index_swapped_after_the_check_is_refused_by_the_resume_itself(tmp_path):
    """torch.distributed.checkpoint reads .metadata with plain pickle.load: only check_checkpoint guarded it, so an
    index changed between the check and accelerate's load_state ran its code."""
    from torch.distributed.checkpoint import FileSystemReader

    from trainer.safe_resume import weights_only_loading

    ckpt = _sharded_checkpoint(tmp_path)
    with weights_only_loading():
        assert FileSystemReader(str(ckpt / "fsdp_0")).read_metadata().state_dict_metadata  # a real index reads
    marker = tmp_path / "ran"
    (ckpt / "fsdp_0" / ".metadata").write_bytes(_call("os", "system", f"touch {marker}"))
    with weights_only_loading(), pytest.raises(pickle.UnpicklingError):
        FileSystemReader(str(ckpt / "fsdp_0")).read_metadata()
    assert not marker.exists()
    import torch.distributed.checkpoint.filesystem as fs

    assert fs.pickle is pickle  # put back after the block
