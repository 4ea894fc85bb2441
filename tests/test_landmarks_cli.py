"""`echomimic landmarks VIDEO -o OUT.npz|.json` and `animate --landmarks FILE`: a driving video's landmarks extracted
once, saved, and reused with the same conditions as the video (real MediaPipe model, a real portrait panned)."""
import json

import numpy as np
import pytest

from echomimic_lib.cli import main as cli

MP = "face_landmarker_v2_with_blendshapes.task"
FRAMES, FPS = 8, 12


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared_data):
    """A short driving video (a portrait panned a few pixels per frame), the face model, two portraits."""
    import av
    import cv2

    d = tmp_path_factory.mktemp("lmcli")
    img = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "portrait_a.png")), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    video = d / "drive.mp4"
    c = av.open(str(video), "w")
    s = c.add_stream("libx264", rate=FPS)
    s.width = s.height = 160
    s.pix_fmt = "yuv420p"
    for i in range(FRAMES):
        shift = np.float32([[1, 0, 4 * i], [0, 1, 3 * i]])
        frame = cv2.resize(cv2.warpAffine(img, shift, (w, h), borderMode=cv2.BORDER_REFLECT), (160, 160))
        for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return {"dir": d, "video": video, "mp": shared_data / "mediapipe" / MP,
            "ref": shared_data / "images" / "portrait_b.png", "ref_a": shared_data / "images" / "portrait_a.png"}


@pytest.fixture(scope="module")
def saved(media):
    """The video's landmarks through the command line, as .npz and .json."""
    out = {}
    for suffix in ("npz", "json"):
        path = media["dir"] / f"drive.{suffix}"
        assert cli(["landmarks", str(media["video"]), "-o", str(path), "--mediapipe-model", str(media["mp"]), "--offline",
                    "-q"]) == 0
        out[suffix] = path
    return out


def _same_sequence(a, b):
    for k in ("lmks", "lmks3d", "trans_mat", "blendshapes", "valid", "face_counts"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert (a.fps, a.policy, a.image_size, a.blendshape_names) == (b.fps, b.policy, b.image_size, b.blendshape_names)


def test_saved_file_loads_back_equal_to_the_extraction_animate_does(media, saved, capsys):
    from echomimic_lib.landmarks import extract_driving_landmarks, load_sequence

    seq = extract_driving_landmarks(str(media["video"]), model_path=media["mp"])
    assert len(seq) == FRAMES and seq.fps == FPS and seq.policy == "interpolate" and seq.lmks3d is not None
    for path in saved.values():
        _same_sequence(load_sequence(path), seq)
    assert json.loads(saved["json"].read_text())["format"] == "echomimic-landmarks"
    # the summary line and the preview (the drawing animate conditions on, one frame per driving frame)
    out = media["dir"] / "again.npz"
    preview = media["dir"] / "preview.mp4"
    assert cli(["landmarks", str(media["video"]), "-o", str(out), "--preview", str(preview), "--width", "64",
                "--mediapipe-model", str(media["mp"]), "--offline"]) == 0
    line = capsys.readouterr().out
    assert f"{FRAMES} frames at {FPS} fps, 0 without a face" in line and "preview" in line, line
    from echomimic_lib.io.video_io import read_video
    from echomimic_lib.landmarks import conditions_from_driver

    clip = read_video(preview, with_audio=False)
    assert len(clip.frames) == FRAMES and clip.frames[0].shape == (64, 64, 3)
    drawn = conditions_from_driver(seq, None, FRAMES, (64, 64), parts="landmarks", sync=None)
    assert np.abs(clip.frames.astype(int) - drawn.astype(int)).mean() < 8 and drawn.max() > 0  # h264: close, not equal


def _condition_frames(media, landmarks, mode="v1-landmarks", audio=None, parts=None, n=20):
    """The condition frames animate's own code draws for --landmarks (before any weight)."""
    from echomimic_lib.jobs.animate import AnimateRequest, prepare_condition
    from echomimic_lib.jobs.reference_input import read_reference
    from echomimic_lib.modes import get_mode
    from echomimic_lib.pipeline import settings_for

    req = AnimateRequest(reference=str(media["ref"]), audio=audio, output="x.mp4", mode=mode, landmarks=str(landmarks),
                         parts=parts, mediapipe_model=str(media["mp"]), download=False)
    settings = settings_for(mode, "normal", width=64, height=64)
    c = prepare_condition(get_mode(mode), req, read_reference(req.reference), n, settings)
    return c.condition.render(range(c.condition.num_frames)), c.reference


def test_conditions_from_the_file_equal_those_from_the_video(media, saved):
    video, ref_v = _condition_frames(media, media["video"])
    assert video.shape == (20, 64, 64, 3) and video.max() > 0
    for path in saved.values():
        frames, ref_f = _condition_frames(media, path)
        np.testing.assert_array_equal(frames, video)
        np.testing.assert_array_equal(ref_f, ref_v)
    a, _ = _condition_frames(media, media["video"], "v1-audio+landmarks", parts="eyes,nose")
    b, _ = _condition_frames(media, saved["npz"], "v1-audio+landmarks", parts="eyes,nose")
    np.testing.assert_array_equal(a, b)


def test_landmark_only_length_and_a_batch_row_follow_the_file(media, saved, tmp_path):
    from echomimic_lib.audio.unconditional import UnconditionalAudio
    from echomimic_lib.jobs.batch.manifest import check_jobs, read_manifest

    for fps in (24.0, FPS):
        assert (UnconditionalAudio.for_driving(saved["npz"], fps).num_frames
                == UnconditionalAudio.for_driving(media["video"], fps).num_frames == int(FRAMES * fps / FPS))
    manifest = tmp_path / "jobs.csv"
    manifest.write_text("name,reference,mode,landmarks,mediapipe_model\n"
                        f"row,{media['ref']},landmarks,{saved['json']},{media['mp']}\n")
    (job,) = check_jobs(read_manifest(manifest, tmp_path / "out", {"smoke": True}))
    assert job.error is None and job.frames == FRAMES * 2, job.error  # 24 fps: the 12 fps file's length


def test_animate_smoke_renders_from_the_saved_file(media, saved, tmp_path):
    from echomimic_lib.io.video_io import probe

    out = tmp_path / "lm.mp4"
    assert cli(["animate", "--smoke", "--mode", "landmarks", "--reference", str(media["ref"]), "--landmarks",
                str(saved["npz"]), "--mediapipe-model", str(media["mp"]), "--models", str(tmp_path / "tiny"),
                "-o", str(out), "-q"]) == 0
    info = probe(out)
    assert info["frames"] == FRAMES * 2 and info["width"] == 64  # the file's 8 frames at 12 fps, at 24 fps


@pytest.fixture
def no_mediapipe(monkeypatch):
    """MediaPipe's landmarker and the weight loaders, replaced by recorders that fail the run if reached."""
    import echomimic_lib.landmarks.extractor as extractor
    import echomimic_lib.model_set as model_set

    calls = []

    def reached(name):
        def f(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was reached before the input was refused")
        return f

    monkeypatch.setattr(extractor.FaceLandmarkExtractor, "__init__", reached("FaceLandmarkExtractor"))
    monkeypatch.setattr(model_set, "load_models", reached("load_models"))
    monkeypatch.setattr(model_set, "ensure_weights", reached("ensure_weights"))
    return calls


def _refused(capsys, args, words, folder, calls):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), (words, err)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before  # nothing written or replaced
    assert calls == []


def test_landmarks_refusals_come_before_mediapipe_and_leave_nothing(media, saved, tmp_path, capsys, no_mediapipe):
    import shutil

    video = tmp_path / "drive.mp4"
    shutil.copy(media["video"], video)
    existing = tmp_path / "old.npz"
    existing.write_bytes(b"keep me")
    (tmp_path / "old.mp4").write_bytes(b"keep me too")
    (tmp_path / "empty_models").mkdir()
    mp = ["--mediapipe-model", str(media["mp"]), "--offline"]
    base = ["landmarks", str(video)]
    for args, words in (
        (base + ["-o", str(existing)] + mp, ["-o", "old.npz already exists", "--force"]),
        (base + ["-o", str(video)] + mp, ["-o", "same file as VIDEO", "another -o"]),
        (base + ["-o", str(tmp_path / "x.txt")] + mp, [".npz, .json", "x.npz"]),
        (["landmarks", str(tmp_path / "nowhere.mp4"), "-o", str(tmp_path / "x.npz")] + mp, ["nowhere.mp4", "not found"]),
        (["landmarks", str(existing), "-o", str(tmp_path / "x.npz")] + mp, ["old.npz", "cannot be opened"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--preview", str(tmp_path / "old.mp4")] + mp,
         ["--preview", "old.mp4 already exists", "--force"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--preview", str(tmp_path / "p.gif")] + mp, ["--preview", ".mp4"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--reference", str(media["ref"])] + mp, ["--reference", "--preview"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--preview", str(tmp_path / "p.mp4"), "--width", "60"] + mp,
         ["--width 60", "multiple of 8"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--preview", str(tmp_path / "p.mp4"), "--parts", "ears"] + mp, ["--parts"]),
        (base + ["-o", str(tmp_path / "x.npz"), "--offline", "--models", str(tmp_path / "empty_models")],
         ["face_landmarker.task", "not found", "--mediapipe-model"]),
    ):
        _refused(capsys, args, words, tmp_path, no_mediapipe)
    assert existing.read_bytes() == b"keep me"


def test_force_replaces_the_outputs(media, tmp_path):
    out, preview = tmp_path / "d.json", tmp_path / "p.mp4"
    out.write_text("old")
    preview.write_bytes(b"old")
    assert cli(["landmarks", str(media["video"]), "-o", str(out), "--preview", str(preview), "--force", "--reference",
                str(media["ref"]), "--width", "64", "--mediapipe-model", str(media["mp"]), "--offline", "-q"]) == 0
    from echomimic_lib.io.video_io import probe
    from echomimic_lib.landmarks import load_sequence

    assert len(load_sequence(out)) == FRAMES and probe(preview)["frames"] == FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "p.mp4"]  # no temporary file left


def test_animate_refuses_an_unusable_landmark_file_before_mediapipe_and_weights(media, tmp_path, capsys, no_mediapipe):
    from echomimic_lib.landmarks import LandmarkSequence, save_sequence

    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 600, dtype=np.uint8).tobytes())
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2, 3]")
    flat = save_sequence(tmp_path / "flat.npz", LandmarkSequence.from_pixels(np.full((4, 478, 3), 200.0), fps=25.0))
    for path, words in ((junk, ["--landmarks", "not a landmark file", "echomimic landmarks VIDEO"]),
                        (listed, ["--landmarks", "not a landmark file"]),
                        (flat, ["no face mesh and pose", "echomimic landmarks VIDEO"])):
        args = ["animate", "--smoke", "--mode", "landmarks", "--reference", str(media["ref"]), "--landmarks", str(path),
                "--mediapipe-model", str(media["mp"]), "--models", str(tmp_path / "tiny"), "-o", str(tmp_path / "o.mp4")]
        _refused(capsys, args, words, tmp_path, no_mediapipe)
