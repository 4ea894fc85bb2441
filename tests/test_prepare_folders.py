"""``echomimic-train prepare IN OUT`` checks its folders before any model is loaded: OUT the videos' folder itself, or a
folder of other files (a batch's manifest.jsonl, notes), had manifest.jsonl / report.jsonl / prepare_config.json written
over the user's files and the clips mixed in; a wrong --cache-latents VAE failed only after every clip was prepared."""
from __future__ import annotations

import hashlib

import pytest

from trainer.cli import main


@pytest.fixture
def no_models(monkeypatch):
    import trainer.data.prepare as prep

    def no(*a, **k):
        raise AssertionError("models were loaded before the folders were checked")
    monkeypatch.setattr(prep, "preflight", no)


def _videos(folder):
    folder.mkdir(parents=True)
    (folder / "talk.mp4").write_bytes(b"a user's video")
    (folder / "manifest.jsonl").write_text('{"reference": "me.png", "audio": "talk.mp4"}\n')  # an `echomimic batch` manifest
    return folder


def _state(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case,words", [
    ("out-is-in", ["is the videos' folder", "Give a new folder"]),
    ("out-is-in-through-a-link", ["is the videos' folder"]),
    ("out-has-other-files", ["is a folder of other files (manifest.jsonl, notes.txt, talk.mp4)", "not a prepared dataset",
                             "Give a new or empty folder"]),
    ("in-inside-out", ["is a folder of other files (videos)", "not a prepared dataset"]),
    ("in-missing", ["not found", "give the folder of your videos"]),
    ("out-is-a-file", ["is a file", "give a folder for the prepared dataset"]),
])
def test_prepare_refuses_an_output_that_would_mix_with_the_users_files(case, words, tmp_path, no_models, capsys):
    videos = _videos(tmp_path / "videos")
    out = tmp_path / "ds"
    if case == "out-is-in":
        out = videos
    elif case == "out-is-in-through-a-link":
        out.symlink_to(videos)
    elif case == "out-has-other-files":
        out = _videos(out)
        (out / "notes.txt").write_text("mine")
    elif case == "in-inside-out":
        out, videos = tmp_path, videos
        for p in tmp_path.iterdir():
            if p.name != "videos":
                raise AssertionError(p)
    elif case == "in-missing":
        videos = tmp_path / "nowhere"
    elif case == "out-is-a-file":
        out.write_text("mine")
    before = _state(tmp_path)
    rc = main(["prepare", str(videos), str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert _state(tmp_path) == before  # nothing written, nothing replaced


def test_prepare_accepts_a_new_folder_an_empty_one_a_folder_inside_the_videos_and_a_prepared_dataset(tmp_path):
    from trainer.data.prepare import check_folders

    videos = _videos(tmp_path / "videos")
    check_folders(videos, tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_folders(videos, tmp_path / "empty")
    check_folders(videos, videos / "prepared")  # harmless: the prepared clips hold no video files
    ds = tmp_path / "ds"
    (ds / "status").mkdir(parents=True)
    (ds / "prepare_config.json").write_text("{}")
    (ds / "my notes.txt").write_text("kept")  # a prepared dataset is resumed whatever else is in it
    check_folders(videos, ds)
    worker = tmp_path / "worker"  # another worker has just created it and is writing its config
    worker.mkdir()
    (worker / ".prepare_config.json.partial").write_text("{")
    check_folders(videos, worker)


def test_a_wrong_cache_latents_vae_is_refused_before_any_clip(tmp_path, no_models, capsys):
    videos = _videos(tmp_path / "videos")
    for vae, words in ((tmp_path / "no-vae", "VAE not found"), (videos, "no VAE weights")):
        rc = main(["prepare", str(videos), str(tmp_path / "ds"), "--cache-latents", str(vae), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "ds").exists()
