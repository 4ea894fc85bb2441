"""Trust audit 16: the code of the VFR retiming, the one-pass speech reader, the HTTP queue split and the prepare
settings check, played as a new user making mistakes and as a hostile file. One test per hole found, each named after
it: a crash of the whole process (a ComfyUI server with it) on a 7.1 recording, a traceback instead of a clear error,
a tiny video whose timestamps make millions of frames."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.test_batch_hunt_5 import _queue, comfy, media  # noqa: F401  (comfy, media: the stand-in server's fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _pcm_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """A 16-bit PCM wav of ``samples`` (T, C) int16, its header written by hand (any channel count)."""
    channels = samples.shape[1]
    data = np.ascontiguousarray(samples, dtype="<i2").tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(data))
                     + data)
    return path


# ------------------------------------------------------------------------------------------ audio channels
def test_audio_of_eight_or_more_channels_does_not_crash_the_process(tmp_path):
    """PyAV's to_ndarray of a planar frame of 8+ channels read past its plane pointers: a 7.1 recording (or a 10-channel
    wav) killed the process with a segmentation fault (ComfyUI with it). Read in a child process, so a crash fails this
    test instead of ending the run; every channel's samples come back as they are."""
    rng = np.random.default_rng(16)
    samples = (rng.uniform(-0.5, 0.5, (12000, 10)) * 32767).astype(np.int16)
    wav = _pcm_wav(tmp_path / "ten.wav", samples)
    np.save(tmp_path / "want.npy", (samples.T / 32768).astype(np.float32))
    code = textwrap.dedent(f"""
        import numpy as np
        from echomimic_lib.io.audio_file import read_audio
        from echomimic_lib.jobs.speech_input import read_speech
        from echomimic_lib.audio.track import read_mono_16k
        audio, rate = read_audio({str(wav)!r})
        assert rate == 16000 and np.array_equal(audio, np.load({str(tmp_path / 'want.npy')!r})), audio.shape
        read_speech({str(wav)!r}, 25.0, 5)  # the one-pass reader (a start kept, the rest summarised)
        assert read_mono_16k({str(wav)!r}).shape == (12000,)
        print("read")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "read" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_audio_with_more_channels_than_ffmpeg_reads_is_a_clear_error(tmp_path):
    """A header declaring 1000 channels gave a bare ``ValueError: Invalid layout: 0 channels`` from PyAV's resampler;
    now an error naming the file, the count and the fix (mix it down), as does any count past MAX_CHANNELS."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.io.audio_file import read_audio

    for channels in (1000, 65):
        wav = _pcm_wav(tmp_path / f"c{channels}.wav", np.full((400, channels), 3000, np.int16))
        with pytest.raises(EchoMimicError) as exc:
            read_audio(wav)
        assert str(wav) in str(exc.value) and "-ac 2" in str(exc.value), exc.value


# ------------------------------------------------------------------------------------------ VFR retiming
def test_vfr_timestamps_years_apart_do_not_make_billions_of_frames(tmp_path):
    """A 1.4 KB video of 5 frames whose last timestamp lies 10^10 s after the others was retimed into 3 x 10^11 ticks
    of 30 fps (each a copy of one frame): landmark or pose extraction ran for ever and filled memory. Timestamps that
    repeat each frame more than MAX_TICKS_PER_FRAME times are damaged, not pauses: the frames are read as stored."""
    from echomimic_lib.io.retime import ClockedFrames, on_clock
    from echomimic_lib.io.video_io import VideoFrames
    from tests.test_vfr_retime import _number, _painted

    path = _painted(tmp_path / "gap.mkv", [0, 33, 66, 100, 10**13])
    video = on_clock(VideoFrames(path), "the driving video", "its landmarks keep the video's own timing")
    assert not isinstance(video, ClockedFrames)
    frames = []
    for frame in video:  # (the damaged file's frames, as stored: 5, not billions)
        frames.append(_number(frame))
        assert len(frames) <= 5
    assert frames == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ echomimic queue
def test_workflow_node_without_inputs_is_a_clear_error(tmp_path, media, capsys):  # noqa: F811
    """A node written without its ``inputs`` object (a hand-edited or cut-down workflow) gave ``KeyError: 'inputs'``
    from build_prompt, even with --dry-run; now one error line naming the node and the fix."""
    from echomimic_lib.jobs.queue_client import main

    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"1": {"class_type": "LoadImage"}, "2": {"class_type": "LoadAudio", "inputs": {}},
                                "3": {"class_type": "SaveVideo", "inputs": {}}}))
    assert main([str(flow), "--portraits", str(media[0]), "--audios", str(media[1]), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "node 1 (LoadImage) has no 'inputs' object" in err and "Export (API)" in err and "Traceback" not in err


def test_results_path_that_is_a_file_is_a_clear_error(comfy, media, tmp_path, capsys):  # noqa: F811
    """``--results out.jsonl`` (a file given where a folder goes) with several --server: FileExistsError traceback
    from mkdir; now an error naming --results and the fix, before anything is queued, the file left as it was."""
    url, state = comfy
    mine = tmp_path / "out.jsonl"
    mine.write_text("my notes\n")
    assert _queue(url, media, "--server", url.replace("127.0.0.1", "localhost"), "--results", str(mine)) == 2
    err = capsys.readouterr().err
    assert f"--results {mine} is a file, not a folder" in err and state["prompts"] == []
    assert mine.read_text() == "my notes\n"


@pytest.mark.parametrize("run", [
    {"pid": 10**30, "prefixes": ["echomimic/anna__hello"]},  # OverflowError from os.kill
    {"pid": 1, "prefixes": 5},  # TypeError: 'int' object is not iterable
    {"pid": 1, "prefixes": [["echomimic/anna__hello"]]},  # TypeError: unhashable type: 'list'
])
def test_damaged_run_entry_in_the_queue_state_is_not_a_traceback(tmp_path, run):
    """A queue state whose run entry was edited or damaged crashed ``claim`` with a traceback; such an entry names no
    live run: it is dropped, and the run goes on (a well-formed live run still holds its jobs)."""
    from echomimic_lib.jobs.queue_state import QueueState

    path = tmp_path / ".echomimic_queue.json"
    path.write_text(json.dumps({"version": 2, "servers": {}, "runs": {"x": {**run, "host": socket.gethostname()}}}))
    book = QueueState(path)
    book.claim(["echomimic/anna__hello"])
    runs = json.loads(path.read_text())["runs"]
    assert list(runs) == [book.run_id]
    book.release()


def test_saved_files_in_the_queue_state_that_are_not_a_list_are_asked_again(comfy, media, monkeypatch, capsys):  # noqa: F811
    """``--resume`` with a state whose job record says ``"files": 5`` ended in ``TypeError: Value after * must be an
    iterable`` after the run; such files are not trusted: the job's prompt is asked about again and its real files
    listed."""
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    assert _queue(url, media, "--wait") == 0
    path = media[0] / ".echomimic_queue.json"
    saved = json.loads(path.read_text())
    for rec in saved["servers"][url].values():
        rec["files"] = 5
    path.write_text(json.dumps(saved))
    capsys.readouterr()
    assert _queue(url, media, "--resume") == 0
    out = capsys.readouterr().out
    assert "echomimic/anna__hello [p1] echomimic/p1.mp4" in out and state["prompts"] == ["p1", "p2"]  # nothing queued again


# ------------------------------------------------------------------------------------------ echomimic-train prepare
@pytest.mark.parametrize("text", ["[" * 100_000, '{"whisper": "w.pt"}', '{"curate": [1]}'])
def test_damaged_prepare_config_is_a_clear_error(tmp_path, text):
    """A dataset's prepare_config.json nested too deeply (RecursionError), with a model recorded as a bare path
    (AttributeError: 'str' object has no attribute 'get') or a curate list crashed a resumed prepare with a traceback;
    now a ConfigError naming the file or the differing setting."""
    from trainer.config import ConfigError
    from trainer.data.clean import PrepareConfig
    from trainer.data.prepare_settings import check_same_settings

    (tmp_path / "prepare_config.json").write_text(text)
    with pytest.raises(ConfigError) as exc:
        check_same_settings(tmp_path, PrepareConfig(), {"file": "tiny.pt", "sha256": "ab" * 32})
    assert "prepare_config.json" in str(exc.value) or "--whisper w.pt" in str(exc.value), exc.value


# ------------------------------------------------------------------------------------------ echomimic poses --audio
def test_poses_from_speech_longer_than_a_video_can_be_are_refused(tmp_path, shared_data, monkeypatch, capsys):
    """``echomimic poses --audio`` without ``--length`` read the speech with no length bound: a 1 Hz wav of a few KB is
    hours of speech, whose 16 kHz mono (64 GB for 2 MB of samples) the gesture analysis then held whole. It now follows
    the speech as animate does: at most a video's MAX_LENGTH frames, refused with the fix (here MAX_LENGTH is made
    small, so that the unbounded read stays cheap: 60 s of speech at 24 fps are 1440 frames; at 1 kHz, the lowest rate
    taken since speech under it is refused, tests/test_speech_low_rate.py)."""
    import shutil

    from echomimic_lib.cli import main as cli
    from echomimic_lib.jobs import speech_length

    library = tmp_path / "poses"
    shutil.copytree(shared_data / "pose" / "01", library / "01")
    samples = (np.random.default_rng(1).uniform(-0.3, 0.3, (60_000, 1)) * 32767).astype(np.int16)
    wav = _pcm_wav(tmp_path / "one_khz.wav", samples, rate=1000)
    monkeypatch.setattr(speech_length, "MAX_LENGTH", 1000)
    out = tmp_path / "talk.npz"
    assert cli(["poses", "--audio", str(wav), "-o", str(out), "--gesture-library", str(library), "-q"]) != 0
    err = capsys.readouterr().err
    assert "more than the 1000 a video can have" in err and "--length N" in err and not out.exists(), err
