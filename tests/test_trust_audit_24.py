"""Trust audit 24: a full disk under numpy's own .npz writing, a pose .npz's frame rate, a landmark .json's size."""
from __future__ import annotations

import errno
import io
import json
import types
import zipfile

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError


class _FillsAfter(io.RawIOBase):
    """A file that takes ``room`` bytes, then says ENOSPC as the system does (at whichever write reaches it: a
    member's data, a header rewritten on close, the zip's directory, the last flush)."""

    def __init__(self, raw, room):
        self.raw, self.room = raw, room

    def writable(self):
        return True

    def seekable(self):
        return True

    def seek(self, *args):
        return self.raw.seek(*args)

    def tell(self):
        return self.raw.tell()

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(b)
        return self.raw.write(b)

    def close(self):
        self.raw.close()
        super().close()


def _disk_fills_after(monkeypatch, room):
    """``np.savez_compressed(path)`` opens ``path`` through ``zipfile.ZipFile`` (``io.open`` in zipfile's module), and
    writes the members through that file object: that open is the one given a disk with ``room`` bytes left."""
    def fake_open(file, mode="r", *args, **kwargs):
        if "r" in mode and "+" not in mode:
            return io.open(file, mode, *args, **kwargs)
        return io.BufferedWriter(_FillsAfter(io.FileIO(file, "w"), room))

    fake = types.ModuleType("io")
    fake.__dict__.update(io.__dict__)
    fake.open = fake_open
    monkeypatch.setattr(zipfile, "io", fake)


def _pose(shared_data):
    from echomimic_lib.pose import load_pose

    return load_pose(shared_data / "pose" / "01")


def _landmarks(frames=8):
    from echomimic_lib.landmarks.sequence import LandmarkSequence

    r = np.random.default_rng(0)
    lmks = np.concatenate([r.random((frames, 478, 2)), -r.random((frames, 478, 1)) * 0.01], 2)
    return LandmarkSequence(lmks=lmks, lmks3d=-r.random((frames, 468, 3)) * 7e-3, trans_mat=-r.random((frames, 4, 4)),
                            blendshapes=(r.random((frames, 52)) * 1e-6).astype(np.float32),
                            blendshape_names=[f"shape_{i:02d}" for i in range(52)], fps=60.0, image_size=(1920, 1080))


@pytest.mark.parametrize("room", [0, 300, 20_000, "all but the end"])
@pytest.mark.parametrize("kind", ["pose", "landmarks"])
def test_a_full_disk_under_numpys_npz_writing_keeps_the_earlier_file_and_leaves_no_temporary(shared_data, tmp_path,
                                                                                             monkeypatch, kind, room):
    """``echomimic poses VIDEO -o poses.npz`` / ``echomimic landmarks VIDEO -o lmks.npz`` over an earlier file, the
    disk filling at the first byte, in a member, or at the zip's closing directory (numpy writes through zipfile into
    a file object, whose buffered last writes land on close): a WriteError naming the file, the earlier file
    byte-for-byte as it was, no temporary file beside it."""
    from echomimic_lib.io.os_errors import WriteError
    from echomimic_lib.landmarks.io import save_sequence
    from echomimic_lib.pose.io import save_pose_npz

    if kind == "pose":
        seq = _pose(shared_data)
        save = save_pose_npz
        first, second = seq[:3], seq[10:40]
        path = save(first, tmp_path / "out.npz")
    else:
        save = lambda s, p: save_sequence(p, s)  # noqa: E731
        first, second = _landmarks(2), _landmarks(12)
        path = save(first, tmp_path / "out.npz")
    before = path.read_bytes()
    size = save(second, tmp_path / "whole.npz").stat().st_size
    (tmp_path / "whole.npz").unlink()
    _disk_fills_after(monkeypatch, size - 1 if room == "all but the end" else room)
    with pytest.raises(WriteError, match=rf"cannot write {path}: no space left"):
        save(second, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.npz"]
    save(second, path)  # parity: with room, it writes
    assert path.stat().st_size == size


def _pose_npz_with_meta(shared_data, tmp_path, **meta):
    from echomimic_lib.pose.io import save_pose_npz

    path = save_pose_npz(_pose(shared_data)[:4], tmp_path / "poses.npz")
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    doc = dict(json.loads(bytes(data["meta"])), **meta)
    data["meta"] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    np.savez_compressed(path, **data)
    return path


@pytest.mark.parametrize("fps", [True, False, "24", "x", [24], None, -2, 0, 1e999])
def test_a_pose_npz_whose_frame_rate_is_no_positive_number_is_refused_naming_the_file(shared_data, tmp_path, fps):
    """``"fps": true`` in a pose .npz's meta loaded as a 1 fps sequence (float(True)); "24" as 24; -2 was refused by
    the sequence without naming the file ("pose sequence fps must be a positive number, got -2.0."). Now each is
    refused when the file is read, naming the file, the value and the fix."""
    from echomimic_lib.pose.io import load_pose_npz

    path = _pose_npz_with_meta(shared_data, tmp_path, fps=fps)
    with pytest.raises(EchoMimicError) as info:
        load_pose_npz(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and f"frame rate (fps) {json.dumps(fps)} is not a positive number" in msg, msg
    assert "echomimic poses VIDEO -o FILE.npz" in msg, msg


@pytest.mark.parametrize("canvas", [[True, True], [0, 512], ["512", "512"], [512]])
def test_a_pose_npz_whose_canvas_is_no_size_in_pixels_is_refused_naming_the_file(shared_data, tmp_path, canvas):
    """``"canvas_size": [true, true]`` loaded as a 1x1 canvas; [0, 512] was refused without naming the file."""
    from echomimic_lib.pose.io import load_pose_npz

    path = _pose_npz_with_meta(shared_data, tmp_path, canvas_size=canvas)
    with pytest.raises(EchoMimicError) as info:
        load_pose_npz(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and "canvas_size" in msg and "echomimic poses VIDEO -o FILE.npz" in msg, msg


def test_a_pose_npz_with_an_ordinary_frame_rate_still_loads(shared_data, tmp_path):
    """Parity: an integral fps (a hand-edited 25) and the saved float both load."""
    from echomimic_lib.pose.io import load_pose_npz

    assert load_pose_npz(_pose_npz_with_meta(shared_data, tmp_path, fps=25)).fps == 25.0
    assert load_pose_npz(_pose_npz_with_meta(shared_data, tmp_path, fps=29.97)).fps == 29.97


def test_a_landmark_json_over_the_cap_is_refused_unread_naming_the_file_and_the_limit(tmp_path, monkeypatch):
    """A landmark .json was read whole, whatever its size (a disk image renamed lmks.json: the memory ran out before
    it was found not to be JSON). Now a file over the cap is refused by its size, before it is read."""
    from echomimic_lib.landmarks import io as lio

    path = lio.save_sequence(tmp_path / "lmks.json", _landmarks(2))
    monkeypatch.setattr(lio, "MAX_JSON_BYTES", path.stat().st_size - 1, raising=False)
    with pytest.raises(EchoMimicError) as info:
        lio.load_sequence(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and f"over the {path.stat().st_size - 1} bytes" in msg, msg
    assert ".npz" in msg, msg  # the fix: the compact format


def test_a_landmark_json_over_the_cap_is_never_written(tmp_path, monkeypatch):
    """The writer refuses what the reader would refuse (before anything is written), saying to save as .npz."""
    from echomimic_lib.landmarks import io as lio

    monkeypatch.setattr(lio, "MAX_JSON_BYTES", 10_000, raising=False)
    with pytest.raises(EchoMimicError, match=r"lmks\.json: .*over the 10000 bytes.*\.npz"):
        lio.save_sequence(tmp_path / "lmks.json", _landmarks(2))
    assert list(tmp_path.iterdir()) == []
    assert len(lio.load_sequence(lio.save_sequence(tmp_path / "lmks.npz", _landmarks(2)))) == 2


def test_the_landmark_json_cap_holds_ten_minutes_at_60_fps_with_margin(tmp_path):
    """The cap is sized from a real frame: 478 landmarks, the mesh, its pose and 52 blendshapes, every float at full
    precision; ten minutes at 60 fps fit with a margin of at least a half."""
    from echomimic_lib.landmarks import io as lio

    frames = 10
    per_frame = lio.save_sequence(tmp_path / "lmks.json", _landmarks(frames)).stat().st_size / frames
    assert per_frame * 10 * 60 * 60 * 1.5 < lio.MAX_JSON_BYTES
    assert len(lio.load_sequence(tmp_path / "lmks.json")) == frames  # parity


def test_a_sparse_file_past_the_landmark_json_cap_is_refused_by_its_size(tmp_path):
    """The real cap, on a file that size (sparse: no disk used), refused before a byte of it is read."""
    from echomimic_lib.landmarks import io as lio

    path = tmp_path / "lmks.json"
    with open(path, "wb") as fh:
        fh.truncate(lio.MAX_JSON_BYTES + 1)
    with pytest.raises(EchoMimicError, match=rf"lmks\.json: {lio.MAX_JSON_BYTES + 1} bytes, over the "
                                             rf"{lio.MAX_JSON_BYTES} bytes a landmark \.json may be.*not read"):
        lio.load_sequence(path)
