"""User mistakes given to the headless commands, second hunt (after ``test_cli_bad_input``, ``test_inputs_hunt`` and
``test_audit_holes``): each is refused with exit code 2, a message naming the option, the problem and the fix, no
traceback, before any weight or model is looked up, and nothing is written."""
from __future__ import annotations

from pathlib import Path

import pytest

from echomimic_lib.cli import main as cli
from tests._media import write_wav
from tests.test_cli_bad_input import MP_MODEL, loads  # noqa: F401  (the fixture that fails any weight access)


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data):
    """A second of speech, a portrait, and the wrong things users give: a text file, an empty file, a single V1 .pkl
    landmark frame, a folder."""
    from echomimic_lib.io.audio_file import read_audio

    d = tmp_path_factory.mktemp("mistakes")
    wav, sr = read_audio(shared_data / "audio" / "echomimic_en.wav")
    (d / "notes.txt").write_text("my notes\n")
    (d / "empty.mp4").write_bytes(b"")
    (d / "folder").mkdir()
    return {"speech": write_wav(d / "speech.wav", wav[0, :sr], sr), "ref": shared_data / "images" / "portrait_a.png",
            "video": shared_data / "video" / "driving_a.mp4", "text": d / "notes.txt", "empty": d / "empty.mp4",
            "folder": d / "folder", "pkl": shared_data / "v1_pose_pkl" / "2.pkl", "mp": shared_data / "mediapipe" / MP_MODEL}


def _run(args, capsys):
    rc = cli([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "report it" not in err, err
    return rc, err


# ------------------------------------------------------------------------------------------------ --models a file
@pytest.mark.parametrize("command", ["animate-smoke", "animate", "landmarks", "dub", "env"])
def test_a_models_folder_that_is_a_file_is_named_before_anything_looks_in_it(command, files, tmp_path, loads, capsys,  # noqa: F811
                                                                           monkeypatch):
    """``--models weights.pth`` (or $ECHOMIMIC_MODELS set to a file): a smoke run said '<file>: File exists; check that
    the path exists...', a plain one listed the weights missing 'in' the file and told to download them there, and
    ``echomimic landmarks`` looked for the MediaPipe model at 'file/mediapipe'."""
    models = tmp_path / "denoising_unet.pth"
    models.write_bytes(b"not a folder")
    out = tmp_path / "out.mp4"
    base = ["--models", models]
    if command == "env":
        monkeypatch.setenv("ECHOMIMIC_MODELS", str(models))
        base = []
    args = {"animate-smoke": ["animate", "--smoke", "--reference", files["ref"], "--audio", files["speech"], "-o", out],
            "animate": ["animate", "--offline", "--no-face-crop", "--reference", files["ref"], "--audio", files["speech"],
                        "-o", out],
            "env": ["animate", "--offline", "--no-face-crop", "--reference", files["ref"], "--audio", files["speech"], "-o", out],
            "landmarks": ["landmarks", files["video"], "-o", tmp_path / "lm.npz", "--offline"],
            "dub": ["dub", "--video", files["video"], "--audio", files["speech"], "-o", out, "--offline"]}[command]
    before = sorted(tmp_path.iterdir())
    rc, err = _run(args + base, capsys)
    flag = "$ECHOMIMIC_MODELS" if command == "env" else "--models"
    assert rc == 2 and f"{flag} {models}: is a file, not a folder; give the models folder" in err, err
    assert loads == [] and sorted(tmp_path.iterdir()) == before and models.read_bytes() == b"not a folder"


# ------------------------------------------------------------------------------------------------ dub --video
@pytest.mark.parametrize("what,words", [
    ("folder", "is a folder, not a video"),
    ("text", "cannot be opened as a media file"),
    ("empty", "the file is empty (0 bytes)"),
    ("speech", "no video frames (an audio file?)"),
])
def test_dub_names_what_its_video_is_and_asks_for_a_video(what, words, files, tmp_path, loads, capsys):  # noqa: F811
    """``dub --video FOLDER`` said 'source video not found'; a text, empty or sound file was refused without the option
    and with the audio reader's advice ('use a wav, mp3, flac, m4a or mp4 file')."""
    out = tmp_path / "out.mp4"
    rc, err = _run(["dub", "--video", files[what], "--audio", files["speech"], "-o", out, "--offline",
                    "--mediapipe-model", files["mp"]], capsys)
    assert rc == 2 and f"--video {files[what]}: {words}" in err, err
    assert "of one person" in err and "use a wav" not in err, err
    assert loads == [] and not out.exists()


# ------------------------------------------------------------------------------------------------ animate --landmarks
@pytest.mark.parametrize("what,words", [
    ("text", ["--landmarks", "cannot be opened as a media file", "a driving video of a face", "echomimic landmarks VIDEO"]),
    ("empty", ["--landmarks", "the file is empty (0 bytes)", "a folder of V1 .pkl landmark frames"]),
    ("speech", ["--landmarks", "no video frames (an audio file?)", "a driving video of a face"]),
    ("pkl", ["--landmarks", "is one V1 landmark frame", "give the folder that holds the frames", "v1_pose_pkl"]),
    ("ref", ["--landmarks", "is a still picture (1 frame)", "the picture to animate is --reference"]),
])
def test_animate_landmarks_that_are_no_driving_video_are_named_before_mediapipe(what, words, files, tmp_path, loads,  # noqa: F811
                                                                               capsys):
    """A text / empty / sound file or one .pkl frame as ``--landmarks`` was first refused for a missing MediaPipe model
    (it was taken for a video), then with the audio reader's advice ('use a wav, mp3, ...'); a still picture (the
    portrait given to the wrong option) rendered a video whose face never moved."""
    out = tmp_path / "out.mp4"
    models = tmp_path / "models"  # no MediaPipe model anywhere: the landmarks are refused before it is looked for
    rc, err = _run(["animate", "--smoke", "--models", models, "--mode", "landmarks", "--landmarks", files[what],
                    "--reference", files["ref"], "--audio", files["speech"], "-o", out], capsys)
    assert rc == 2 and all(w in err for w in words), err
    assert "MediaPipe" not in err and "use a wav" not in err, err
    assert loads == [] and not out.exists() and not models.exists()


def test_a_landmark_folder_and_a_saved_sequence_are_still_taken(files, tmp_path, loads, capsys):  # noqa: F811
    """The check reads only files: a .pkl folder passes it (and fails here only later, at the missing output folder)."""
    from echomimic_lib.jobs.video_inputs import check_landmark_source

    check_landmark_source(files["pkl"].parent)
    assert check_landmark_source(files["video"]) is None  # a real driving video


# ------------------------------------------------------------------------------------------------ batch manifests
@pytest.mark.parametrize("suffix,row", [
    (".csv", "reference,audio,seed\nref.png,speech.wav,inf\n"),
    (".csv", "reference,audio,steps\nref.png,speech.wav,-Infinity\n"),
    (".jsonl", '{"reference": "ref.png", "audio": "speech.wav", "seed": Infinity}\n'),
    (".jsonl", '{"reference": "ref.png", "audio": "speech.wav", "steps": 1e400}\n'),
], ids=["csv-inf", "csv-minus-infinity", "jsonl-Infinity", "jsonl-1e400"])
def test_an_infinite_whole_number_in_a_manifest_is_a_row_error_not_a_crash(suffix, row, files, tmp_path, loads, capsys):  # noqa: F811
    """``seed`` = inf in a CSV, or ``Infinity`` / ``1e400`` in a JSONL row: OverflowError traceback and 'This is a bug'."""
    (tmp_path / "ref.png").write_bytes(Path(files["ref"]).read_bytes())
    (tmp_path / "speech.wav").write_bytes(Path(files["speech"]).read_bytes())
    manifest = tmp_path / f"jobs{suffix}"
    manifest.write_text(row)
    rc, err = _run(["batch", manifest, "-o", tmp_path / "out", "--smoke", "--offline"], capsys)
    key = "seed" if "seed" in row else "steps"
    assert rc == 2 and f"line {1 if suffix == '.jsonl' else 2}: {key}: '" in err and "is not a whole number" in err, err
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,words", [
    (["--threads", "-1"], "--threads -1: use 0 or more"),
    (["--attempts", "0"], "--attempts 0: use 1 or more"),
    (["--workers", "0"], "--workers 0: use 1 or more"),
    (["--deep-cache", "-1"], "--deep-cache -1: the DeepCache interval is 0 (off) to"),
    (["-o", "{ref}"], "is a file, not a folder; the batch writes <name>.mp4 for every row"),
    (["{folder}"], "is a folder, not a manifest; give a .csv or .jsonl file, or a folder of images as --images DIR"),
], ids=["threads-negative", "attempts-zero", "workers-zero", "deep-cache-negative", "output-a-file", "manifest-a-folder"])
def test_batch_options_are_refused_before_any_row_is_checked(extra, words, files, tmp_path, loads, capsys, monkeypatch):  # noqa: F811
    """--threads -1 was taken as 1 and --attempts 0 as 1 without a word; --deep-cache -1 failed every row (exit 1)
    instead of the command; -o an existing file said '<file>: File exists; check that the path exists...'; a folder
    given as the manifest was 'not found'. Each is now said before a row is read (no row's checks run)."""
    import echomimic_lib.jobs.batch.runner as runner

    monkeypatch.setattr(runner, "check_jobs", lambda jobs: pytest.fail("a row was checked before the batch's options"))
    (tmp_path / "ref.png").write_bytes(Path(files["ref"]).read_bytes())
    (tmp_path / "speech.wav").write_bytes(Path(files["speech"]).read_bytes())
    (tmp_path / "jobs.csv").write_text("reference,audio\nref.png,speech.wav\n")
    args = ["batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", "--smoke", "--offline"]
    subs = {"ref": str(tmp_path / "ref.png"), "folder": str(files["folder"])}
    extra = [e.format(**subs) for e in extra]
    if extra[0] == "-o":
        args[args.index("-o") + 1] = extra[1]
    elif extra[0] == subs["folder"]:
        args[1] = extra[0]
    else:
        args += extra
    before = sorted(tmp_path.iterdir())
    rc, err = _run(args, capsys)
    assert rc == 2 and words in err, err
    assert loads == [] and sorted(tmp_path.iterdir()) == before
    assert (tmp_path / "ref.png").read_bytes() == Path(files["ref"]).read_bytes()


# ------------------------------------------------------------------------------------------------ queue
@pytest.mark.parametrize("reply", [{"prompt_id": None}, {"prompt_id": {"id": 1}}, {"prompt_id": ""}, {"prompt_id": True}],
                         ids=["null", "object", "empty", "bool"])
def test_queue_never_reports_a_job_queued_without_a_prompt_id(reply, files, tmp_path, capsys):
    """A server (a proxy, another service) answering POST /prompt with ``{"prompt_id": null}`` was taken as a queued
    job: exit 0 and '-> echomimic/a__speech [None]' printed, nothing queued at all."""
    from tests._http_stub import JsonHandler, start

    class Server(JsonHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._reply(200, {"name": "a.png"} if self.path.startswith("/upload") else reply)

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    (faces / "a.png").write_bytes(Path(files["ref"]).read_bytes())
    (speech / "speech.wav").write_bytes(Path(files["speech"]).read_bytes())
    workflow = Path(__file__).resolve().parents[1] / "workflows" / "api" / "v1_audio.json"
    url, stop = start(Server)
    try:
        rc, err = _run(["queue", workflow, "--portraits", faces, "--audios", speech, "--server", url, "--timeout", "5"], capsys)
    finally:
        stop()
    assert rc == 2 and f"{url}/prompt: the answer holds no prompt_id" in err and "is this ComfyUI?" in err, err


# ------------------------------------------------------------------------------------------------ make-tiny, convert
@pytest.mark.parametrize("args,words", [
    (["make-tiny", "{tmp}/tiny", "--seed", "99999999999999999999999"], "--seed 99999999999999999999999: use a whole number"),
    (["make-tiny", "{tmp}/tiny", "--seed", "-1"], "--seed -1: use a whole number from 0 to 2^32-1"),
    (["make-tiny", ""], "make-tiny: the folder name is empty"),
    (["convert", "{tmp}/w.pth", ""], "convert: the destination is empty"),
], ids=["seed-huge", "seed-negative", "empty-folder", "convert-empty-destination"])
def test_make_tiny_and_convert_refuse_a_seed_out_of_range_and_an_empty_destination(args, words, tmp_path, capsys,
                                                                                   monkeypatch):
    """make-tiny --seed beyond 64 bits was an OverflowError traceback ('This is a bug'); a negative seed was taken; an
    empty folder name (`make-tiny $DIR` with DIR unset) wrote a whole tiny model set into the current folder, and
    ``convert a.pth ""`` wrote there too."""
    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "w.pth")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    rc, err = _run([a.format(tmp=tmp_path) for a in args], capsys)
    assert rc == 2 and words in err, err
    assert not any(work.iterdir()) and not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("args,words", [
    (["batch", "{tmp}/jobs.csv", "-o", "", "--smoke", "--offline"], "-o is empty; give the output folder"),
    (["batch", "--images", "", "--audios", "{tmp}", "-o", "{tmp}/out", "--smoke"], "--images is empty; give a folder"),
    (["queue", "{workflow}", "--portraits", "", "--audios", "{tmp}", "--dry-run"], "--portraits is empty"),
    (["queue", "{workflow}", "--portraits", "{tmp}", "--audios", "", "--dry-run"], "--audios is empty"),
], ids=["batch-output", "batch-images", "queue-portraits", "queue-audios"])
def test_an_empty_folder_argument_is_never_the_current_folder(args, words, files, tmp_path, loads, capsys, monkeypatch):  # noqa: F811
    """``batch ... -o ""`` (``-o $OUT`` with OUT unset) rendered every row into the current folder (exit 0);
    ``queue --portraits ""`` queued every picture of the current folder."""
    (tmp_path / "ref.png").write_bytes(Path(files["ref"]).read_bytes())
    (tmp_path / "speech.wav").write_bytes(Path(files["speech"]).read_bytes())
    (tmp_path / "jobs.csv").write_text("reference,audio\nref.png,speech.wav\n")
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "holiday.png").write_bytes(Path(files["ref"]).read_bytes())
    (work / "voicemail.wav").write_bytes(Path(files["speech"]).read_bytes())
    monkeypatch.chdir(work)
    workflow = Path(__file__).resolve().parents[1] / "workflows" / "api" / "v1_audio.json"
    rc, err = _run([a.format(tmp=tmp_path, workflow=workflow) for a in args], capsys)
    assert rc == 2 and words in err, err
    assert sorted(p.name for p in work.iterdir()) == ["holiday.png", "voicemail.wav"] and loads == []
