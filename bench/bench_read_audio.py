"""Peak memory and time of ``read_audio`` for a whole long recording and for a short window of it.

    python bench/bench_read_audio.py [--minutes 30] [--codec aac|pcm_s16le] [--json out.json] [--probe]
    python bench/bench_read_audio.py --speech [--minutes 10] [--channels 6] [--rate 96000] [--json out.json]
    python bench/bench_read_audio.py --preview|--validation [--minutes 5] [--channels 6] [--rate 96000] [--json out.json]
    python bench/bench_read_audio.py --gestures [--length N] [--minutes 5] [--channels 6] [--rate 96000] [--json out.json]

A synthetic stereo 48 kHz recording of ``--minutes`` (noise, AAC in .m4a by default; pcm_s16le: a .wav) is written to
a temporary folder; each case runs in a fresh Python process, which reports its wall time and its peak resident
memory (``ru_maxrss``) above the process's memory after the imports. ``--probe``: ``probe``'s audio length instead,
old (the whole audio decoded and held, as ``probe`` did before) beside new (:func:`echomimic_lib.io.audio_length.audio_samples`:
a wav's header, else counted frame by frame). ``--speech``: ``read_speech`` (what ``echomimic animate --audio`` reads)
of a ``--channels`` x ``--rate`` wav, following the audio (the whole track held) beside ``--length 125`` at 25 fps
(5 s: the start it needs kept while the whole track passes a piece at a time, one decode pass), and beside them the
two-pass read it replaced (the start decoded, then the whole track again for its checks), each also with
tracemalloc's peak of the numpy arrays. ``--preview``: ``echomimic poses --audio``'s checks and preview sound without
``--length`` (24 fps, tiny frames), the whole track held as before beside the sound muxed from the file a piece at a
time; ``--validation``: the V3 trainer's validation speech for 81 frames, the whole track held as before beside
``read_v3_speech`` (its start kept, the loudness measured a piece at a time). ``--gestures``: ``echomimic poses
--audio``'s speech path whole (checks, gesture analysis, preview sound; ``--length N`` frames or following the audio),
the analysis decoding the file again and holding its 16 kHz mono as before beside the checks' pass feeding a
``SpeechStream``, with the count of decode passes (calls to ``audio_blocks``)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import av, numpy as np
from echomimic_lib.io.audio_file import read_audio
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
wav, sr = read_audio({path!r}, start={start}, duration={duration})
dt = time.perf_counter() - t
print(json.dumps({{"seconds": round(dt, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "samples": int(wav.shape[1]), "sr": sr}}))
"""
PROBE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import av, numpy as np
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import probe
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if {old!r}:
    wav, sr = read_audio({path!r})
    seconds = wav.shape[1] / sr
else:
    seconds = probe({path!r})["audio_seconds"]
dt = time.perf_counter() - t
print(json.dumps({{"seconds": round(dt, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "audio_seconds": seconds}}))
"""
SPEECH = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {root!r})
import av, numpy as np, torch
from echomimic_lib.jobs.speech_input import read_speech
import echomimic_lib.audio.track, echomimic_lib.audio.features, echomimic_lib.audio.mel
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t = time.perf_counter()
if {two_pass!r}:  # before: the start decoded and kept, then the whole track decoded again for its summary
    from echomimic_lib.audio.features import seconds_for_frames
    from echomimic_lib.audio.track import summarise_track
    from echomimic_lib.io.audio_file import audio_blocks, read_audio
    wav, sr = read_audio({path!r}, duration=seconds_for_frames({length}, 25.0))
    whole = summarise_track(audio_blocks({path!r}))
else:
    wav, sr, raw = read_speech({path!r}, 25.0, {length})
dt = time.perf_counter() - t
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"seconds": round(dt, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "traced_peak_mib": round(traced / 2**20, 1), "kept_mib": round(wav.nbytes / 2**20, 1),
                  "samples": int(wav.shape[1]), "sr": sr}}))
"""

# the measurement of a before/after case: ``run`` once to warm up, then its peak RSS, traced peak and time
MEASURE = r"""
run({warm!r})  # the modules it imports at its first call are no part of the peak
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
t, cpu = time.perf_counter(), time.process_time()
out = run({path!r})
dt, cpu = time.perf_counter() - t, time.process_time() - cpu
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({{"seconds": round(dt, 3), "cpu_seconds": round(cpu, 3), "peak_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, 1),
                  "traced_peak_mib": round(traced / 2**20, 1), **measured(out)}}))
"""
PREVIEW = r"""
import json, resource, sys, tempfile, time, tracemalloc
sys.path.insert(0, {root!r})
import av, numpy as np, torch
from pathlib import Path
from echomimic_lib.io.video_writer import Mp4Writer
from echomimic_lib.jobs.speech_input import frame_count, read_speech
import echomimic_lib.jobs.poses, echomimic_lib.audio.track, echomimic_lib.io.stereo
def run(path):
    if {old!r}:  # before: read_speech held the whole track until the preview was written
        wav, sr, raw = read_speech(path)
    else:
        wav, raw = echomimic_lib.jobs.poses._whole_speech(path, 24.0)
        sr = raw.sample_rate
    frames = frame_count(raw, 24.0, None)
    with tempfile.TemporaryDirectory() as tmp:
        writer = Mp4Writer(Path(tmp) / "p.mp4", 24.0, wav, sr)
        for a in range(0, frames, 240):
            writer.write(np.zeros((min(240, frames - a), 16, 16, 3), np.uint8))
        writer.commit()
    return frames
def measured(frames):
    return {{"frames": frames}}
""" + MEASURE
VALIDATION = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {root!r})
import av, numpy as np, torch
from echomimic_lib.audio.wav2vec import prepare_samples, resample_16k
from echomimic_lib.jobs.speech_input import read_speech
from echomimic_lib.jobs.v3_speech import read_v3_speech
import echomimic_lib.audio.loudness, echomimic_lib.audio.track
def run(path):
    if {old!r}:  # before: trainer/v3/validation.py held the whole track, its mono and its 16 kHz mono
        wav, sr, raw = read_speech(path)
        return prepare_samples(resample_16k(raw.samples.mean(axis=0).astype(np.float32), raw.sample_rate), 81)
    return read_v3_speech(path, 81).prepared(81)
def measured(samples):
    return {{"samples_16k": int(samples.shape[0])}}
""" + MEASURE


GESTURES = r"""
import json, resource, sys, tempfile, time, tracemalloc
sys.path.insert(0, {root!r})
import av, numpy as np, torch
from pathlib import Path
from echomimic_lib.audio.track import SpeechStart
from echomimic_lib.io import audio_file
from echomimic_lib.io.video_writer import Mp4Writer
from echomimic_lib.jobs.speech_input import frame_count, read_speech
from echomimic_lib.pose.gestures.speech import analyze_speech
from echomimic_lib.pose.gestures.speech_stream import SpeechStream
import echomimic_lib.jobs.poses, echomimic_lib.audio.track, echomimic_lib.io.stereo
DECODES, real_blocks, LENGTH = [0], audio_file.audio_blocks, {length!r}
def counted(*a, **k):
    DECODES[0] += 1
    return real_blocks(*a, **k)
audio_file.audio_blocks = counted
def run(path):
    DECODES[0] = 0
    stream = None if {old!r} else SpeechStream(24.0)  # before: analyze_speech(path) decoded the file again
    add = None if stream is None else stream.add
    if LENGTH:
        wav, sr, raw = read_speech(path, 24.0, LENGTH, on_16k=add)
        if stream is not None and not isinstance(raw, SpeechStart):  # (the warm-up: a track within the start)
            stream = SpeechStream(24.0)
            stream.add(raw.mono_16k())
    else:
        wav, raw = echomimic_lib.jobs.poses._whole_speech(path, 24.0, add)
        sr = raw.sample_rate
    speech = analyze_speech(path, 24.0) if stream is None else stream.features()
    frames = frame_count(raw, 24.0, LENGTH or None)
    with tempfile.TemporaryDirectory() as tmp:
        writer = Mp4Writer(Path(tmp) / "p.mp4", 24.0, wav, sr)
        for a in range(0, frames, 240):
            writer.write(np.zeros((min(240, frames - a), 16, 16, 3), np.uint8))
        writer.commit()
    return frames, speech.num_frames, DECODES[0]
def measured(out):
    return {{"frames": out[0], "analysed_frames": out[1], "decodes": out[2]}}
""" + MEASURE


def write(path: Path, minutes: float, codec: str, channels: int = 2, sr: int = 48000) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = layout
        block = (rng.standard_normal((channels, sr)) * 0.1).astype(np.float32)  # one second, repeated
        for _ in range(int(minutes * 60)):
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--codec", default="aac", choices=["aac", "pcm_s16le"])
    ap.add_argument("--json")
    ap.add_argument("--probe", action="store_true", help="probe's audio length: old (whole decode) vs new")
    ap.add_argument("--speech", action="store_true", help="read_speech without and with --length, side by side")
    ap.add_argument("--preview", action="store_true",
                    help="poses --audio's preview sound (no --length): the whole track held (before) vs muxed from the file")
    ap.add_argument("--validation", action="store_true",
                    help="the V3 trainer's validation speech (81 frames): the whole track held (before) vs its start")
    ap.add_argument("--gestures", action="store_true",
                    help="poses --audio's checks, gesture analysis and preview sound: analysed from a second decode "
                         "(before) vs from the checks' pass")
    ap.add_argument("--length", type=int, default=0, help="--gestures: frames (0: the video follows the audio)")
    ap.add_argument("--channels", type=int, default=6)
    ap.add_argument("--rate", type=int, default=96000)
    args = ap.parse_args()
    results = {"minutes": args.minutes, "codec": args.codec, "cases": {}}
    if args.probe:
        return bench_probe(args, results)
    if args.speech:
        return bench_speech(args, results)
    if args.preview or args.validation or args.gestures:
        return bench_before_after(args, results, PREVIEW if args.preview else GESTURES if args.gestures else VALIDATION)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("long.m4a" if args.codec == "aac" else "long.wav")
        write(path, args.minutes, args.codec)
        for name, start, duration in (("whole", 0.0, None), ("first 10 s", 0.0, 10.0), ("10 s from 5:00", 300.0, 10.0)):
            code = CASE.format(root=str(ROOT), path=str(path), start=start, duration=duration)
            got = _child(code)
            results["cases"][name] = got
            print(f"{name:>16}: {got['seconds']:7.3f} s  peak +{got['peak_mib']:7.1f} MiB  ({got['samples']} samples)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def bench_probe(args, results: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("long.m4a" if args.codec == "aac" else "long.wav")
        write(path, args.minutes, args.codec)
        for name, old in (("probe old (whole decode)", True), ("probe new", False)):
            code = PROBE.format(root=str(ROOT), path=str(path), old=old)
            got = _child(code)
            results["cases"][name] = got
            print(f"{name:>26}: {got['seconds']:7.3f} s  peak +{got['peak_mib']:7.1f} MiB  ({got['audio_seconds']:.6f} s of audio)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def bench_speech(args, results: dict) -> None:
    results.update(codec="pcm_s16le", channels=args.channels, rate=args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        write(path, args.minutes, "pcm_s16le", args.channels, args.rate)
        for name, length, two_pass in (("read_speech, the whole track", None, False),
                                       ("--length 125, two passes (before)", 125, True),
                                       ("read_speech --length 125 (5 s)", 125, False)):
            code = SPEECH.format(root=str(ROOT), path=str(path), length=length, two_pass=two_pass)
            got = _child(code)
            results["cases"][name] = got
            print(f"{name:>34}: {got['seconds']:7.3f} s  peak RSS +{got['peak_mib']:7.1f} MiB  numpy peak "
                  f"{got['traced_peak_mib']:7.1f} MiB  kept {got['kept_mib']:7.1f} MiB ({got['samples']} samples)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def bench_before_after(args, results: dict, case: str) -> None:
    results.update(codec="pcm_s16le", channels=args.channels, rate=args.rate,
                   case="poses --audio preview" if args.preview else "V3 validation speech" if args.validation else
                   f"poses --audio checks, gesture analysis, preview sound (--length {args.length})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        write(path, args.minutes, "pcm_s16le", args.channels, args.rate)
        warm = Path(tmp) / "warm.wav"  # 4 s: each case's first call, before its memory is measured
        write(warm, 4 / 60, "pcm_s16le", args.channels, args.rate)
        names = (("analysed from a second decode (before)", "analysed in the checks' pass (now)") if case is GESTURES else
                 ("the whole track held (before)", "a piece at a time (now)"))
        for name, old in zip(names, (True, False)):
            code = case.format(root=str(ROOT), path=str(path), old=old, warm=str(warm), length=args.length)
            got = _child(code)
            results["cases"][name] = got
            print(f"{name:>38}: {got['seconds']:7.3f} s ({got['cpu_seconds']:.1f} s CPU)  peak RSS +{got['peak_mib']:7.1f} MiB  numpy peak "
                  f"{got['traced_peak_mib']:7.1f} MiB" + (f"  {got['decodes']} decodes" if "decodes" in got else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _child(code: str) -> dict:
    """Run one case's ``code`` in a fresh Python (its own peak RSS) and read the JSON line it prints."""
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
