"""Bad input through the real command-line entry point (``echomimic_lib.cli.main``, in-process).

Every case: exit code 2, a message that names the problem and the fix, no Python traceback, no output
or partial file, and -- because every check runs before the weights -- no weight loaded or even looked
up (the loaders are replaced by recorders that fail the run if they are reached).
"""
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.cli import main as cli
from tests._media import write_wav

MP_MODEL = "face_landmarker_v2_with_blendshapes.task"


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    import cv2

    from echomimic_lib.io.audio_file import read_audio

    d = tmp_path_factory.mktemp("media")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    files = {
        "speech": write_wav(d / "speech.wav", wav[0, : int(1.2 * sr)], sr),
        "silent": write_wav(d / "silent.wav", np.zeros(16000)),
        "short": write_wav(d / "short.wav", 0.5 * np.sin(np.arange(160) / 3.0)),  # 10 ms
        "noise_bytes": d / "noise.wav",
        "broken_png": d / "broken.png",
        "noface": d / "noface.png",
        "empty_models": d / "models",
    }
    files["noise_bytes"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    files["broken_png"].write_bytes(b"\x89PNG not really")
    grad = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    cv2.imwrite(str(files["noface"]), grad)
    files["empty_models"].mkdir()
    files["ref"] = shared_data / "images" / "portrait_a.png"
    files["mp"] = shared_data / "mediapipe" / MP_MODEL
    return files


@pytest.fixture
def loads(monkeypatch):
    """Weight loading and weight lookup, replaced by recorders that fail loudly."""
    import echomimic_lib.model_set as model_set
    import echomimic_lib.io.weights as weights

    calls = []

    def recorder(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called: a weight would be read before the input was checked")
        return f

    monkeypatch.setattr(model_set, "load_models", recorder("load_models"))
    monkeypatch.setattr(model_set, "read_state_dict", recorder("model_set.read_state_dict"))
    monkeypatch.setattr(weights, "read_state_dict", recorder("weights.read_state_dict"))
    monkeypatch.setattr(model_set, "ensure_weights", recorder("ensure_weights"))
    return calls


def _no_cuda():
    import torch

    return not torch.cuda.is_available()


def _no_mps():
    import torch

    return not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# (case id, changes to the base command, words the message must contain: the problem and the fix)
CASES = [
    ("width-not-multiple-of-8", ["--width", "100"], ["--width 100", "multiples of 8", "try --width 96 or 104"]),
    ("height-too-small", ["--height", "32"], ["--height 32", "at least 64", "--height 64"]),
    ("size-too-large", ["--width", "4096", "--height", "4096"], ["larger than 2048", "GB of memory", "at most 2048"]),
    ("fps-zero", ["--fps", "0"], ["--fps 0", "between 1 and 120"]),
    ("fps-huge", ["--fps", "500"], ["--fps 500", "between 1 and 120"]),
    ("fps-nan", ["--fps", "nan"], ["--fps nan", "between 1 and 120"]),
    ("steps-negative", ["--steps", "-1"], ["--steps -1", "1..200", "0 = the default"]),
    ("steps-huge", ["--steps", "5000"], ["--steps 5000", "1..200"]),
    ("cfg-negative", ["--cfg", "-1"], ["--cfg -1", "between 0 and 20"]),
    ("cfg-huge", ["--cfg", "80"], ["--cfg 80", "between 0 and 20"]),
    ("length-negative", ["--length", "-5"], ["--length -5", "0 (follow the audio)"]),
    ("context-frames-zero", ["--context-frames", "0"], ["--context-frames 0", "1..32"]),
    ("context-frames-huge", ["--context-frames", "40"], ["--context-frames 40", "1..32"]),
    ("context-overlap-too-big", ["--context-overlap", "12"], ["--context-overlap 12", "smaller than --context-frames"]),
    ("context-overlap-negative", ["--context-overlap", "-1"], ["--context-overlap -1", "0..11"]),
    ("seed-negative", ["--seed", "-3"], ["--seed -3", "0 to 2^64-1"]),
    ("device-unknown", ["--device", "gpu"], ["unknown device 'gpu'", "auto, cpu, cuda"]),
    pytest.param("device-cuda-missing", ["--device", "cuda"], ["--device cuda", "no CUDA GPU", "--device cpu"],
                 marks=pytest.mark.skipif(not _no_cuda(), reason="a CUDA GPU is present"), id="device-cuda-missing"),
    pytest.param("device-mps-missing", ["--device", "mps"], ["--device mps", "not available", "--device cpu"],
                 marks=pytest.mark.skipif(not _no_mps(), reason="MPS is present"), id="device-mps-missing"),
    ("version-mode-mismatch", ["--version", "v2", "--mode", "audio"], ["belongs to EchoMimic V1", "--version v1"]),
    ("v2-without-pose", ["--version", "v2"], ["needs a hand-pose sequence", "--pose DIR"]),
    ("pose-with-v1", ["--pose", "{ref}"], ["--pose is for V2", "--version v2"]),
    ("landmarks-missing", ["--mode", "landmarks", "--landmarks", "{tmp}/nowhere.mp4"], ["nowhere.mp4", "not found", "existing file"]),
    ("output-wrong-extension", ["-o", "{tmp}/out.avi"], ["-o", "out.avi", ".mp4 extension", "out.mp4"]),
    ("output-is-directory", ["-o", "{tmp}/outdir"], ["is a directory", "outdir/out.mp4"]),
    ("output-parent-is-file", ["-o", "{tmp}/afile/out.mp4"], ["afile is a file, not a folder", "choose an output"]),
    ("output-is-device", ["-o", "/dev/null"], ["/dev/null", "not a regular file", "never replaced"]),
    ("output-is-fifo", ["-o", "{tmp}/pipe.mp4"], ["pipe.mp4", "not a regular file", "never replaced"]),
    ("output-not-writable", ["-o", "{readonly}/out.mp4"], ["cannot write into", "permission denied; check the permissions"]),
    ("reference-missing", ["--reference", "{tmp}/none.png"], ["--reference", "none.png", "file not found", "give a portrait"]),
    ("reference-is-folder", ["--reference", "{tmp}"], ["--reference", "is a folder", "image file"]),
    ("reference-corrupt", ["--reference", "{broken_png}"], ["truncated", "copy or download it again"]),
    ("audio-missing", ["--audio", "{tmp}/none.wav"], ["--audio", "none.wav", "file not found", "speech recording"]),
    ("audio-corrupt", ["--audio", "{noise_bytes}"], ["noise.wav", "cannot be opened as a media file", "use a wav"]),
    ("audio-no-sound-track", ["--audio", "{ref}"], ["has no audio stream", "recording with sound"]),
    ("audio-silent", ["--audio", "{silent}"], ["the audio is silent", "digital silence", "recording of speech"]),
    ("audio-too-short", ["--audio", "{short}"], ["too short", "10 ms", "at least 20 ms"]),
    ("no-face", ["--reference", "{noface}"], ["no face found", "noface.png", "--no-face-crop"]),
    ("mediapipe-model-missing", ["--mediapipe-model", None], ["face_landmarker.task", "not found", "--mediapipe-model FILE",
                                                              "--no-face-crop"]),
    ("mediapipe-model-invalid", ["--mediapipe-model", "{broken_png}"], ["not a valid MediaPipe", "download it again"]),
    ("lora-strength-huge", ["--lora-strength", "1e9"], ["--lora-strength 1e+09", "-2..2", "1 = as trained"]),
    ("lora-strength-nan", ["--lora-strength", "nan"], ["--lora-strength", "finite number"]),
    ("cuda-graphs-on-the-cpu", ["--cuda-graphs", "--device", "cpu"],
     ["--cuda-graphs records the denoiser call as a CUDA graph", "needs a CUDA GPU", "'cpu'", "drop --cuda-graphs",
      "NVIDIA GPU (--device auto or cuda"]),
    ("compile-with-low-vram", ["--compile", "--low-vram"], ["--compile cannot go with --low-vram", "Drop one of them"]),
    ("parts-unknown", ["--mode", "audio+landmarks", "--landmarks", "{pkl}", "--parts", "ears", "--no-face-crop"],
     ["--parts", "ears"]),
]


def _expand(args, media, tmp, readonly):
    subs = {k: str(v) for k, v in media.items()} | {"tmp": str(tmp), "readonly": str(readonly),
                                                     "pkl": str(Path(media["ref"]).parents[1] / "v1_pose_pkl")}
    return [a.format(**subs) if isinstance(a, str) else a for a in args]


def _with(base: list, changes: list) -> list:
    """Replace an option's value in ``base`` (None removes the option), or append it."""
    out = list(base)
    i = 0
    while i < len(changes):
        flag = changes[i]
        takes_value = i + 1 < len(changes) and not (isinstance(changes[i + 1], str) and changes[i + 1].startswith("--"))
        value = changes[i + 1] if takes_value else ""
        if flag in out and takes_value:
            j = out.index(flag)
            if value is None:
                del out[j : j + 2]
            else:
                out[j + 1] = value
        elif value is not None:
            out += [flag, value] if takes_value else [flag]
        i += 2 if takes_value else 1
    return out


@pytest.fixture
def readonly_dir(tmp_path):
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (d / "probe").write_bytes(b"")
    except OSError:
        yield d  # permissions work (not root)
    else:
        (d / "probe").unlink()
        if not Path("/sys").is_dir():
            pytest.skip("running as root without /sys: no folder to test an unwritable destination")
        yield Path("/sys")  # root ignores permission bits; sysfs refuses new files even for root
    d.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("case,changes,words", [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in CASES])
def test_bad_input_fails_fast_and_clearly(case, changes, words, media, tmp_path, readonly_dir, loads, capsys):
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    os.mkfifo(tmp_path / "pipe.mp4")
    out = tmp_path / "out.mp4"
    base = ["animate", "--reference", str(media["ref"]), "--audio", str(media["speech"]), "-o", str(out),
            "--models", str(media["empty_models"]), "--offline", "--mediapipe-model", str(media["mp"])]
    args = _with(base, _expand(changes, media, tmp_path, readonly_dir))
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "report it" not in err, err
    for w in words:
        assert w in err, f"{case}: {w!r} missing from: {err}"
    assert loads == [], f"{case}: weights touched before the input was checked: {loads}"
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new, nothing partial
    assert (tmp_path / "outdir").is_dir() and not any((tmp_path / "outdir").iterdir())
    assert stat.S_ISFIFO((tmp_path / "pipe.mp4").stat().st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_cuda_graphs_with_low_vram_is_refused_on_a_gpu_before_any_weight(media, tmp_path, loads, capsys, monkeypatch):
    """On a CUDA device (resolved as the job does, here stood in) --cuda-graphs and --low-vram still exclude each other;
    dub refuses --cuda-graphs off a GPU the same way."""
    import torch

    import echomimic_lib.devices as devices

    out = tmp_path / "out.mp4"
    base = ["--models", str(media["empty_models"]), "--offline", "--mediapipe-model", str(media["mp"]), "-o", str(out)]
    rc = cli(["dub", "--video", str(media["ref"].parents[1] / "video" / "driving_a.mp4"), "--audio", str(media["speech"]),
              "--cuda-graphs", "--device", "cpu"] + base)
    err = capsys.readouterr().err
    assert rc == 2 and "--cuda-graphs records" in err and "'cpu'" in err and "Traceback" not in err, err
    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device("cuda"))
    rc = cli(["animate", "--reference", str(media["ref"]), "--audio", str(media["speech"]), "--dtype", "fp32",
              "--cuda-graphs", "--low-vram"] + base)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "--cuda-graphs cannot go with --low-vram" in err and "Drop one of them" in err, err
    assert loads == [] and not out.exists()


@pytest.mark.parametrize("args,words", [
    (["animate", "--audio", "a.wav", "-o", "o.mp4"], ["the following arguments are required: --reference"]),
    (["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--dtype", "fp8"], ["invalid choice: 'fp8'"]),
    (["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--width", "wide"], ["invalid int value: 'wide'"]),
    (["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
])
def test_usage_errors_exit_2_with_usage(args, words, loads, capsys):
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "usage: echomimic" in err and "Traceback" not in err
    assert all(w in err for w in words), err
    assert loads == []


@pytest.mark.parametrize("args,words", [
    (["make-tiny", "{file}"], ["is a file, not a folder", "give a new or existing folder"]),
    (["make-tiny", "{file}/sub"], ["is a file, not a folder", "choose a folder"]),
    (["convert", "{tmp}/none.pth", "{tmp}/out"], ["weight file not found", "none.pth"]),
    (["download", "--models", "{file}", "--weights", "v2"], ["weights missing", "{file}"]),
])
def test_other_commands_refuse_bad_paths(args, words, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    def offline(**kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    (tmp_path / "a.txt").write_text("x")
    subs = {"file": str(tmp_path / "a.txt"), "tmp": str(tmp_path)}
    before = sorted(tmp_path.iterdir())
    assert cli([a.format(**subs) for a in args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w.format(**subs) in err for w in words), err
    assert sorted(tmp_path.iterdir()) == before



# ---------------------------------------------------------------------------------------------- issue 28
def test_a_wrong_audio_file_is_refused_before_torch_loads(tmp_path, media):
    """A text file given as audio: refused by the PyAV probe, in a process that never imports torch or transformers."""
    import subprocess
    import sys

    text = tmp_path / "speech.wav"
    text.write_text("this is not a recording\n" * 50)
    code = ("import sys, json; from echomimic_lib.cli import main; "
            f"rc = main(['animate', '--reference', {str(media['ref'])!r}, '--audio', {str(text)!r}, '-o', "
            f"{str(tmp_path / 'o.mp4')!r}, '--offline']); "
            "print(json.dumps([rc] + [m in sys.modules for m in ('torch', 'transformers', 'diffusers', 'mediapipe')]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert json_line(r.stdout) == [2, False, False, False, False], r.stdout + r.stderr
    assert "speech.wav" in r.stderr and "cannot be opened as a media file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def json_line(text: str):
    import json

    return json.loads(text.strip().splitlines()[-1])


@pytest.mark.parametrize("flag,value,words", [
    ("--feather", "nan", ["--feather nan", "from 0 to 512"]),
    ("--feather", "-1", ["--feather -1", "from 0 to 512"]),
    ("--dilation", "inf", ["--dilation inf", "from 0 to 2"]),
    ("--dilation", "5", ["--dilation 5", "from 0 to 2"]),
    ("--fps", "nan", ["fps nan", "between 1 and 120"]),
    ("--cfg", "inf", ["cfg inf", "between 0 and 20"]),
])
def test_dub_float_options_are_finite_and_in_range(flag, value, words, media, tmp_path, loads, capsys, shared_data):
    out = tmp_path / "out.mp4"
    rc = cli(["dub", "--video", str(shared_data / "video" / "driving_a.mp4"), "--audio", str(media["speech"]), "-o", str(out),
              "--models", str(media["empty_models"]), "--offline", "--mediapipe-model", str(media["mp"]), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and all(w in err for w in words), err
    assert loads == [] and not out.exists()


def test_length_beyond_the_audio_warns(media, caplog):
    from echomimic_lib.jobs.speech_input import frame_count, read_speech

    _, _, raw = read_speech(media["speech"])  # 1.2 s
    with caplog.at_level("WARNING"):
        n = frame_count(raw, 24.0, 10_000)
    assert n == frame_count(raw, 24.0, None) < 40
    assert any("--length 10000 is beyond the audio" in r.getMessage() and f"{n} frames" in r.getMessage() for r in caplog.records)
    caplog.clear()
    frame_count(raw, 24.0, 5)
    assert not caplog.records


# ---- echomimic queue
@pytest.fixture
def queue_media(tmp_path):
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    (faces / "a.png").write_bytes(b"img")
    (speech / "a.wav").write_bytes(b"aud")
    return faces, speech


def _serve(handler_body):
    """A local server on 127.0.0.1 whose every request is answered by ``handler_body(handler)``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            handler_body(self)

        do_POST = do_GET

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _html(h):
    body = b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>"
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.mark.parametrize("case", ["workflow-missing", "workflow-not-json", "workflow-binary", "url-not-a-url", "url-ftp",
                                  "server-answers-html", "server-never-answers", "timeout-nan"])
def test_queue_refuses_bad_input_without_a_traceback(case, queue_media, tmp_path, capsys):
    import socket

    faces, speech = queue_media
    workflow = Path(__file__).resolve().parents[1] / "workflows" / "api" / "v1_audio.json"
    server, cleanup, extra = "http://127.0.0.1:9", [], []
    words = {"workflow-missing": ["workflow not found", "nope.json", "workflows/api"],
             "workflow-not-json": ["not a readable JSON workflow", "notes.json"],
             "workflow-binary": ["not a readable JSON workflow", "blob.json"],
             "url-not-a-url": ["--server 'localhost 8188'", "not a ComfyUI address", "http://127.0.0.1:8188"],
             "url-ftp": ["--server 'ftp://127.0.0.1'", "not a ComfyUI address"],
             "server-answers-html": ["not JSON", "an HTML page ('Welcome to nginx!')", "ComfyUI's address"],
             "server-never-answers": ["no answer within 1 s", "--timeout"],
             "timeout-nan": ["--timeout nan", "above 0"]}[case]
    if case == "workflow-missing":
        workflow = tmp_path / "nope.json"
    elif case == "workflow-not-json":
        workflow = tmp_path / "notes.json"
        workflow.write_text("this is {not json")
    elif case == "workflow-binary":
        workflow = tmp_path / "blob.json"
        workflow.write_bytes(bytes(range(256)))
    elif case == "url-not-a-url":
        server = "localhost 8188"
    elif case == "url-ftp":
        server = "ftp://127.0.0.1"
    elif case == "server-answers-html":
        httpd = _serve(_html)
        cleanup.append(httpd.shutdown)
        server = f"http://127.0.0.1:{httpd.server_address[1]}"
    elif case == "server-never-answers":  # accepts the connection (the kernel's backlog) and never replies
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        cleanup.append(sock.close)
        server = f"http://127.0.0.1:{sock.getsockname()[1]}"
        extra = ["--timeout", "1"]
    elif case == "timeout-nan":
        extra = ["--timeout", "nan"]
    try:
        rc = cli(["queue", str(workflow), "--portraits", str(faces), "--audios", str(speech), "--server", server, *extra])
    finally:
        for f in cleanup:
            f()
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert all(w in err for w in words), f"{case}: {words} not all in: {err}"


# ---- echomimic evaluate
def test_evaluate_refuses_what_is_not_a_video(media, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    video = Path(media["ref"]).parents[1] / "video" / "driving_a.mp4"
    for path, words, extra in ((media["ref"], ["a still image", "not a video"], []),
                               (text, ["cannot be opened as a media file"], []),
                               (video, ["--fps nan", "between 1 and 240"], ["--fps", "nan"])):
        assert cli(["evaluate", str(path), "--offline", "--mediapipe-model", str(media["mp"]), *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(w in err for w in words), err


def test_evaluate_marks_every_number_unreliable_when_almost_no_face_is_found(media):
    from echomimic_lib.evaluate import clip_from_arrays, evaluate
    from echomimic_lib.landmarks.extractor import FaceLandmarkExtractor

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (12, 128, 128, 3), dtype=np.uint8)  # noise: no face anywhere
    clip = clip_from_arrays(frames, np.zeros((1, 16000), np.float32) + 0.01, 16000, fps=24.0)
    lm = FaceLandmarkExtractor(model_path=media["mp"])
    try:
        rep = evaluate(clip, landmarker=lm)
    finally:
        lm.close()
    assert rep.face_rate is not None and rep.face_rate < 0.5 and not rep.reliable
    assert rep.to_dict()["reliable"] is False
    table = rep.table()
    assert "UNRELIABLE" in table and "background flicker" in table
    flicker_row = next(line for line in table.splitlines() if line.startswith("background flicker"))
    assert "?" in flicker_row
