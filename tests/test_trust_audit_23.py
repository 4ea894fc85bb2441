"""Trust audit 23: the weight / LoRA / pose / landmark readers and writers of echomimic_lib/io, lora, pose, landmarks."""
from __future__ import annotations

import os
import re

import pytest

from echomimic_lib.errors import EchoMimicError, MissingWeightsError, WeightsError


def _readers():
    from echomimic_lib.io.weights import read_state_dict
    from echomimic_lib.landmarks.io import load_sequence
    from echomimic_lib.lora.files import read_lora
    from echomimic_lib.lora.wan_files import read_wan_lora
    from echomimic_lib.pose.io import load_pose, load_pose_npz

    return {"lora": (read_lora, ".safetensors", "models/echomimic/loras"),
            "wan_lora": (read_wan_lora, ".safetensors", "Wan2.1 1.3B LoRA"),
            "weights": (read_state_dict, ".safetensors", "echomimic download"),
            "pose_npz": (load_pose_npz, ".npz", "echomimic poses"),
            "pose_npy": (load_pose, ".npy", "echomimic poses"),
            "landmarks": (load_sequence, ".npz", "echomimic landmarks")}


READERS = ["lora", "wan_lora", "weights", "pose_npz", "pose_npy", "landmarks"]


def _error(reader, path):
    fn, _ext, _fix = _readers()[reader]
    with pytest.raises(EchoMimicError) as info:
        fn(path)
    return info.value


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_file_is_named_with_its_path_and_the_fix(tmp_path, reader):
    """Left by the last session: "landmark file not found: PATH" (no fix), "weight file not found: PATH" (no fix), a
    missing .npy pose frame said "not a pose folder, .npz sequence or .npy frame" (as if it were the wrong kind)."""
    _fn, ext, fix = _readers()[reader]
    path = tmp_path / f"gone{ext}"
    err = _error(reader, path)
    assert str(path) in str(err) and "not found" in str(err) and fix in str(err), err
    if reader == "weights":
        assert isinstance(err, MissingWeightsError) and err.missing == [str(path)]


@pytest.mark.parametrize("reader", READERS)
def test_a_link_to_nothing_is_said_as_such(tmp_path, reader):
    """A link whose file was moved was "file not found" of the link: the message now names where it points."""
    _fn, ext, fix = _readers()[reader]
    path = tmp_path / f"link{ext}"
    os.symlink(f"moved{ext}", path)
    err = _error(reader, path)
    assert f"is a link to moved{ext}" in str(err) and "which does not exist" in str(err) and fix in str(err), err


@pytest.mark.parametrize("reader", READERS)
def test_a_named_pipe_is_named_for_what_it_is_never_waited_on(tmp_path, reader):
    """A FIFO given as a LoRA / weights / pose / landmark file was said to be "not found" though it is there."""
    _fn, ext, fix = _readers()[reader]
    path = tmp_path / f"pipe{ext}"
    os.mkfifo(path)
    err = _error(reader, path)
    assert "named pipe (FIFO), not a file" in str(err) and "not found" not in str(err) and fix in str(err), err
    if reader == "weights":
        assert not isinstance(err, MissingWeightsError)  # (it is there: no download fixes it)


@pytest.mark.parametrize("reader", READERS)
def test_a_link_to_a_device_is_named_for_what_it_is_never_read(tmp_path, reader):
    """A link to /dev/zero was "not found"; it is now named with the device it points at (and never read)."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    _fn, ext, fix = _readers()[reader]
    path = tmp_path / f"zero{ext}"
    os.symlink("/dev/zero", path)
    err = _error(reader, path)
    assert "is a device (/dev/zero), not a file" in str(err) and fix in str(err), err


def test_a_lora_file_that_is_there_still_reads(tmp_path):
    """Parity: an ordinary adapter file reads as before."""
    import torch

    from echomimic_lib.lora.files import LoraInfo, read_lora, write_lora

    path = write_lora(tmp_path / "a.safetensors", {"denoiser.x.to_q.lora_A.weight": torch.zeros(4, 8),
                                                   "denoiser.x.to_q.lora_B.weight": torch.zeros(8, 4)},
                      LoraInfo(weights="v1_audio", rank=4, alpha=4.0))
    assert list(read_lora(path).layers) == ["denoiser.x.to_q"]


def test_a_weights_folder_given_as_a_file_is_no_missing_download(tmp_path):
    """A folder at a weight file's name is there: a WeightsError saying so, not MissingWeightsError (a download)."""
    from echomimic_lib.io.weights import read_state_dict

    (tmp_path / "unet.safetensors").mkdir()
    with pytest.raises(WeightsError, match="is a folder, not a file") as info:
        read_state_dict(tmp_path / "unet.safetensors")
    assert not isinstance(info.value, MissingWeightsError)


@pytest.mark.parametrize("reader", ["lora", "wan_lora"])
def test_a_checkpoint_whose_meta_json_is_nested_too_deeply_is_no_recursion_traceback(tmp_path, reader):
    """``--lora CHECKPOINT`` reads the checkpoint's meta.json for its hint by hand (json.loads): a damaged one nested
    past the parser's depth escaped as a RecursionError traceback. Now read through io/json_file (an unreadable
    meta.json is still no hint, as before: the folder is said to need exporting)."""
    fn, _ext, _fix = _readers()[reader]
    ckpt = tmp_path / "step-00000100"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text("[" * 200_000)
    with pytest.raises(WeightsError, match="a training checkpoint") as info:
        fn(ckpt)
    assert "export" in str(info.value)


def test_a_checkpoints_readable_meta_json_still_gives_its_hint(tmp_path):
    """Parity: a full fine-tune's meta.json (``"lora": null``) is still said as such."""
    import json

    from echomimic_lib.lora.files import read_lora

    ckpt = tmp_path / "step-00000100"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text(json.dumps({"weights": "v2", "lora": None}))
    with pytest.raises(WeightsError, match="a full fine-tune of v2"):
        read_lora(ckpt)


@pytest.fixture
def no_hang():
    """A reader that waits on a pipe fails the test (after 60 s) instead of hanging the run (not a timing assertion:
    the fixed reader never opens the pipe)."""
    import signal

    def stop(*_):
        raise TimeoutError("the reader waited on a named pipe")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _frame_folder(tmp_path, kind, ext, make):
    folder = tmp_path / kind
    folder.mkdir()
    make(folder / f"0{ext}")
    return folder


FRAME_FOLDERS = [("landmark_pkl", ".pkl"), ("pose_npy", ".npy")]


def _load_folder(kind, folder):
    from echomimic_lib.landmarks.io import load_pkl_folder
    from echomimic_lib.pose.io import load_released_folder

    return (load_pkl_folder if kind == "landmark_pkl" else load_released_folder)(folder)


def test_a_named_pipe_among_the_landmark_frames_is_named_never_waited_on(tmp_path, no_hang):
    """`animate --landmarks FOLDER` (a V1 .pkl folder): a FIFO named 0.pkl was opened and read (read_bytes): the
    command (or the ComfyUI server's worker) hung forever."""
    folder = _frame_folder(tmp_path, "landmark_pkl", ".pkl", os.mkfifo)
    with pytest.raises(EchoMimicError, match=r"0\.pkl: is a named pipe \(FIFO\), not a file; give the frame files"):
        _load_folder("landmark_pkl", folder)


@pytest.mark.parametrize("kind,ext", FRAME_FOLDERS)
def test_a_huge_file_among_the_frames_is_refused_before_it_is_read(tmp_path, kind, ext):
    """A frame file is a few KB; a huge one (a sparse file, a video renamed 0.npy, a link to a disk image) was read
    whole into memory first (a 3 GB one: a MemoryError / the machine swapping) and only then found not to be a frame.
    Now refused by its size on disk, unread."""
    from echomimic_lib.io.safe_pickle import MAX_FRAME_FILE_BYTES

    def big(path):
        with open(path, "wb") as fh:
            fh.truncate(MAX_FRAME_FILE_BYTES + 1)  # sparse: no disk used

    folder = _frame_folder(tmp_path, kind, ext, big)
    with pytest.raises(EchoMimicError, match=rf"0\{ext}: {MAX_FRAME_FILE_BYTES + 1} bytes, far past any frame file.*not read"):
        _load_folder(kind, folder)


def test_a_folder_named_like_a_landmark_frame_is_a_clear_error(tmp_path):
    """A folder named 0.pkl in a landmark folder was an IsADirectoryError traceback."""
    folder = _frame_folder(tmp_path, "landmark_pkl", ".pkl", os.mkdir)
    with pytest.raises(EchoMimicError, match=r"0\.pkl: is a folder, not a file"):
        _load_folder("landmark_pkl", folder)


@pytest.mark.parametrize("kind,ext", FRAME_FOLDERS)
def test_a_link_to_a_device_among_the_frames_is_never_read(tmp_path, kind, ext):
    """A link to /dev/zero named 0.pkl was read until the memory ran out (the pose folder lists only regular files,
    so it is skipped there; a single .npy given as the pose is said as a device)."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    folder = _frame_folder(tmp_path, kind, ext, lambda p: os.symlink("/dev/zero", p))
    from echomimic_lib.io.safe_pickle import load_npy, load_pickle

    with pytest.raises(EchoMimicError, match=r"is a device \(/dev/zero\), not a file"):
        (load_pickle if ext == ".pkl" else load_npy)(folder / f"0{ext}")


def test_ordinary_frame_files_still_load(tmp_path):
    """Parity: a V1 landmark frame (.pkl of an array) and a released pose frame (.npy of a dict) read as before."""
    import pickle

    import numpy as np

    from echomimic_lib.io.safe_pickle import load_npy, load_pickle

    arr = np.arange(478 * 2, dtype=np.float64).reshape(478, 2)
    (tmp_path / "0.pkl").write_bytes(pickle.dumps(arr))
    assert np.array_equal(load_pickle(tmp_path / "0.pkl"), arr)
    np.save(tmp_path / "0.npy", np.array({"a": 1}, dtype=object), allow_pickle=True)
    assert load_npy(tmp_path / "0.npy") == {"a": 1}


def test_a_full_disk_while_overwriting_a_pose_folder_keeps_the_earlier_frames_whole(shared_data, tmp_path, monkeypatch):
    """``save_released_folder(seq, folder, overwrite=True)`` moved each frame in as soon as it was written: a full disk
    at the third frame left frames 0-1 of the new sequence and 2-11 of the old one, one mixed motion that plays as a
    jump. Now every frame is written first and all are moved in together; a failure leaves the earlier folder as it
    was, and no temporary file."""
    import errno

    from echomimic_lib.io.os_errors import WriteError
    from echomimic_lib.pose import io as pose_io
    from echomimic_lib.pose import load_pose, save_released_folder

    seq = load_pose(shared_data / "pose" / "01")
    folder = save_released_folder(seq[:12], tmp_path / "poses")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real, calls = pose_io._write_object_npy, []

    def fills_the_disk(path, holder):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as fh:
                fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, holder)

    monkeypatch.setattr(pose_io, "_write_object_npy", fills_the_disk)
    with pytest.raises(WriteError, match="no space left"):
        save_released_folder(seq[20:25], folder, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # (no .partial files either)
    monkeypatch.setattr(pose_io, "_write_object_npy", real)
    save_released_folder(seq[20:25], folder, overwrite=True)  # parity: the overwrite itself still works
    assert len(load_pose(folder)) == 5 and sorted(p.name for p in folder.iterdir()) == [f"{i}.npy" for i in range(5)]


@pytest.mark.parametrize("kind", ["pipe", "link"])
def test_a_gesture_library_given_as_a_pipe_or_a_link_to_nothing_is_said_as_such(tmp_path, kind):
    """``--gestures LIB`` / the gesture node: a FIFO was "cannot read LIB ([Errno 20] Not a directory)", a link to a
    moved folder "LIB not found"; each is now said for what it is, with what to give."""
    from echomimic_lib.pose.gestures.library import find_sources

    lib = tmp_path / "poses.npz"
    os.mkfifo(lib) if kind == "pipe" else os.symlink("moved", lib)
    want = "is a named pipe (FIFO), not a file" if kind == "pipe" else "is a link to moved"
    with pytest.raises(EchoMimicError, match=rf"gesture library: .*poses\.npz {re.escape(want)}.*Give a V2 pose folder"):
        find_sources(lib)


@pytest.mark.parametrize("kind", ["missing", "link", "file"])
def test_a_landmark_folder_that_is_not_there_is_named_with_the_fix(tmp_path, kind):
    """``load_pkl_folder`` said "landmark folder not found: PATH" of a missing folder, a link to a moved one and a file
    alike, with no fix."""
    from echomimic_lib.landmarks.io import load_pkl_folder

    folder = tmp_path / "lmks"
    if kind == "link":
        os.symlink("moved", folder)
    elif kind == "file":
        folder.write_text("x")
    want = {"missing": "landmark folder not found", "link": "is a link to moved", "file": "is a file, not a folder"}[kind]
    with pytest.raises(EchoMimicError, match=rf"lmks: {want}.*; give the folder of V1 \.pkl landmark frames"):
        load_pkl_folder(folder)


def _landmark_json(path, **extra):
    import json

    doc = {"format": "echomimic-landmarks", "lmks": [[[0.5, 0.5, 0.0]]], "lmks3d": [[[0.0, 0.0, 0.0]]],
           "trans_mat": [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]], **extra}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("fps", ["x", [1], True, -2])
def test_a_landmark_file_whose_frame_rate_is_no_number_is_a_clear_error(tmp_path, fps):
    """``animate --landmarks lmks.json`` with ``"fps": "x"`` (or a list) in the file: load_sequence took it, and the
    driver check's ``np.isfinite`` / ``>`` raised a TypeError traceback. Now refused when read, naming the value and
    the fix, said once."""
    from echomimic_lib.landmarks.io import load_driver_sequence, load_sequence

    path = _landmark_json(tmp_path / "lmks.json", fps=fps)
    with pytest.raises(EchoMimicError, match=r"frame rate \(fps\) .* is not a positive number"):
        load_sequence(path)
    with pytest.raises(EchoMimicError) as info:
        load_driver_sequence(path)
    assert str(info.value).count("echomimic landmarks VIDEO") == 1, info.value


def test_a_landmark_file_whose_image_size_is_not_positive_is_refused(tmp_path):
    """``"image_size": [-5, 0]`` was taken as the analysed frames' size (the drawing divides by it)."""
    from echomimic_lib.landmarks.io import load_sequence

    with pytest.raises(EchoMimicError, match=r"image_size \(-5, 0\) is not a width and height in pixels"):
        load_sequence(_landmark_json(tmp_path / "lmks.json", image_size=[-5, 0]))


def test_an_ordinary_landmark_json_still_loads(tmp_path):
    from echomimic_lib.landmarks.io import load_driver_sequence

    seq = load_driver_sequence(_landmark_json(tmp_path / "lmks.json", fps=25, image_size=[640, 480]))
    assert seq.fps == 25 and seq.image_size == (640, 480) and len(seq) == 1
