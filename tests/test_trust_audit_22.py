"""Trust audit 22 (4225ec2..09cdd0e): each test failed before its fix."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from echomimic_lib.errors import EchoMimicError, WeightsError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="hard links, fcntl locks")


# ------------------------------------------------- (a) a LoRA merged past its weights' dtype: refused, never NaN / clamped
def _adapter(value: float, rank: int = 4, alpha: float = 4.0):
    from echomimic_lib import lora

    a = torch.full((rank, 8), value)
    b = torch.full((8, rank), value)
    return lora.LoraAdapter(Path("big.safetensors"), lora.LoraInfo(weights="v1_audio", rank=rank, alpha=alpha),
                            {"denoiser.blk.to_q": (a, b)})


@pytest.mark.parametrize("dtype,value", [(torch.float16, 200.0), (torch.bfloat16, 1e19), (torch.float32, 1e19)],
                         ids=["fp16-past-65504", "bf16-past-float32", "fp32-inf"])
def test_a_lora_whose_merge_overflows_the_weights_is_refused_and_the_model_left_as_it_was(dtype, value):
    """A scale check passes (alpha / rank = 1) but the merged weights do not fit the model's dtype: fp16 weights were
    silently clamped to 65504 (a render of noise), a float32 merge past 3.4e38 gave inf / NaN weights. Now a
    WeightsError names the file, the layer, the strength and the fix, and no weight is changed."""
    from echomimic_lib.lora.apply import LoraPatch

    layer = nn.Linear(8, 8, bias=False).to(dtype)
    before = layer.weight.detach().clone()
    patch = LoraPatch(_adapter(value), {"denoiser.blk.to_q": layer})
    with pytest.raises(WeightsError) as err:
        patch.set_strength(1.0)
    said = str(err.value)
    assert "big.safetensors" in said and "denoiser.blk.to_q" in said and "strength" in said
    assert torch.equal(layer.weight, before) and patch.strength == 0.0


def test_an_ordinary_lora_still_merges():
    from echomimic_lib.lora.apply import LoraPatch

    layer = nn.Linear(8, 8, bias=False).half()
    patch = LoraPatch(_adapter(0.5), {"denoiser.blk.to_q": layer})
    patch.set_strength(1.0)
    assert torch.isfinite(layer.weight).all() and patch.strength == 1.0
    patch.remove()


def test_comfyuis_patch_path_refuses_the_overflow_too():
    """:func:`patched_weight` (ComfyUI's ModelPatcher): the same merge, the same refusal (was weights of 65504 / inf)."""
    from echomimic_lib.lora.apply import patched_weight

    with pytest.raises(WeightsError, match="denoiser.blk.to_q"):
        patched_weight(_adapter(200.0), "denoiser.blk.to_q", torch.zeros(8, 8), 1.0, torch.float16, 0)
    with pytest.raises(WeightsError, match="denoiser.blk.to_q"):
        patched_weight(_adapter(1e19), "denoiser.blk.to_q", torch.zeros(8, 8), 1.0, torch.float32, 0)
    ok = patched_weight(_adapter(0.5), "denoiser.blk.to_q", torch.zeros(8, 8), 1.0, torch.float16, 0)
    assert torch.isfinite(ok).all()


# --------------------------------------------- (b) an empty lock-named file with another name: never written through
@posix_only
def test_an_empty_lock_named_hard_link_to_a_users_file_is_never_written(tmp_path):
    """An empty file at the claim's name is taken as a killed run's (no data in it to lose; removed at the end). But
    one that is a hard link of a user's file (``ln notes.txt .out.mp4.lock``) had the claim's details written into the
    user's file, which kept them after the render. Now it is refused, naming the file, and the user's file stays empty."""
    from echomimic_lib.jobs.output_file import OutputClaim

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"")
    os.link(notes, tmp_path / ".out.mp4.lock")
    with pytest.raises(EchoMimicError, match="not a claim file"):
        OutputClaim(tmp_path / "out.mp4").acquire()
    assert notes.read_bytes() == b"" and (tmp_path / ".out.mp4.lock").exists()


@posix_only
def test_an_empty_queue_lock_hard_linked_to_a_users_file_is_never_written(tmp_path, capsys):
    from echomimic_lib.jobs.queue_state import QueueState

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"")
    os.link(notes, tmp_path / ".echomimic_queue.json.lock")
    book = QueueState(tmp_path / ".echomimic_queue.json")
    book.record("http://s", "job", "f", "pid")
    assert notes.read_bytes() == b""
    assert not book.ok and "not a lock file" in capsys.readouterr().err


@posix_only
def test_a_lone_empty_lock_file_is_still_taken_over(tmp_path):
    """(A run killed between making its claim and writing it leaves an empty file: taken over, as before.)"""
    from echomimic_lib.jobs.output_file import OutputClaim
    from echomimic_lib.jobs.queue_state import QueueState

    (tmp_path / ".out.mp4.lock").write_bytes(b"")
    with OutputClaim(tmp_path / "out.mp4"):
        pass
    (tmp_path / ".echomimic_queue.json.lock").write_bytes(b"")
    book = QueueState(tmp_path / ".echomimic_queue.json")
    book.record("http://s", "job", "f", "pid")
    assert book.ok


# ------------------------------- (c) a journal line written whole but for its line break: the next one not glued to it
def test_a_journal_line_missing_only_its_line_break_does_not_swallow_the_next_one(tmp_path):
    """A run whose disk filled (or that was killed) after writing a journal line's JSON but before its ``\\n`` left a
    line that reads as whole: the next run appended its own line straight after it, and the two glued together read as
    one damaged line, both records lost (their jobs queued again). Now an append starts on a line of its own."""
    from echomimic_lib.jobs import queue_journal as journal
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    path = tmp_path / "state.json"
    other = QueueState(path)
    other.claim(["a"])
    mine = QueueState(path)
    mine.claim(["b"])
    with open(path, "ab") as fh:  # run A: its line whole, its line break never written
        fh.write(json.dumps(journal.job_event("a", "http://s", {"prompt_id": "pa", "fingerprint": "f"})).encode())
    mine.record("http://s", "b", "f", "pb")
    servers = read_state(path)["servers"]
    assert servers["http://s"]["a"]["prompt_id"] == "pa"
    assert servers["http://s"]["b"]["prompt_id"] == "pb"


# ------------------------------------------------------ (d) a stale video with a time past any date: moved, no crash
def test_a_stale_video_with_an_out_of_range_time_is_still_set_aside():
    """``batch`` moves an earlier video to ``stale/<name>.rendered-<its time>.mp4``; a file whose time is past year
    9999 (tmpfs / btrfs / xfs keep such times: a clock gone wrong, a ``touch -d``) crashed the run with a ValueError
    after the lock was taken. Now the name says the time is unknown."""
    from echomimic_lib.jobs.batch.runner import set_aside_stale

    base = Path("/dev/shm") if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        out = Path(tmp)
        video = out / "row.mp4"
        video.write_bytes(b"old video")
        try:
            os.utime(video, (0, 1e12))
        except (OSError, OverflowError):
            pytest.skip("this file system keeps no such time")
        if os.lstat(video).st_mtime < 1e12:
            pytest.skip("this file system clamps file times")

        class Job:
            line, name, output = 2, "row", video
        moved = set_aside_stale([Job()], out)
        target = Path(moved["row"])
        assert target.parent == out / "stale" and target.read_bytes() == b"old video" and not video.exists()


# ------------------------------------- (e) a big file that is no queue state given as --state: refused, never read whole
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS, sparse files")
def test_a_video_given_as_the_queue_state_is_refused_without_reading_it_whole(tmp_path):
    """``--state clip.mp4`` (arguments swapped): the whole file was read into memory, then decoded into text (two to
    four times its size again) before it was found not to be a queue state: a video of gigabytes ran the machine out
    of memory (MemoryError, or the OOM killer). Now a file whose first bytes are no JSON object is refused from them."""
    import subprocess

    video = tmp_path / "clip.mp4"
    with open(video, "wb") as fh:
        fh.write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")
        fh.truncate(2 ** 30)  # (sparse: no disk used)
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (700 * 2 ** 20, 700 * 2 ** 20))\n"
            "from echomimic_lib.jobs.queue_state import QueueState\n"
            "from echomimic_lib.jobs.queue_replies import QueueError\n"
            "try:\n"
            "    QueueState(sys.argv[1])\n"
            "except QueueError as exc:\n"
            "    print('REFUSED', exc)\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code, str(video)], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0 and done.stdout.startswith("REFUSED"), done.stderr[-2000:]
    assert str(video) in done.stdout


# ------------------------------- (f) ruled out: the re-read cache (inode, size) fooled by an inode used again
def test_a_file_at_the_same_inode_with_another_compaction_is_read_whole(tmp_path):
    """A run re-reads only the bytes appended since it last saw the file, keyed by (device, inode) and size: an inode
    freed by a compaction can be given to the next file. Simulated here at its worst (the same inode, written in place,
    no shorter): the document's epoch (a new one each compaction, read from its first bytes) tells it apart, so the
    other file is read whole and its records are kept, never skipped as "already read"."""
    from echomimic_lib.jobs import queue_journal as journal
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    path = tmp_path / "state.json"
    mine = QueueState(path)
    mine.claim(["mine"])
    inode = os.stat(path).st_ino
    other = journal.state_text({"http://s": {"theirs": {"prompt_id": "pt", "fingerprint": "f"}}},
                               {}, None, journal.new_epoch())
    with open(path, "r+b") as fh:  # (another file at this inode: another compaction's, as long or longer)
        fh.write(other.encode().ljust(os.stat(path).st_size + 10))
    assert os.stat(path).st_ino == inode
    mine.record("http://s", "mine", "f", "pm")
    mine.release()  # (compacted from what this run has: a file taken as "already read" would lose "theirs")
    servers = read_state(path)["servers"]["http://s"]
    assert servers["theirs"]["prompt_id"] == "pt" and servers["mine"]["prompt_id"] == "pm"
