"""The headless user, day 8: an input that is a symbolic link to nothing (a moved or deleted file the link still names)
is said as such -- "X: is a link to Y, which does not exist" -- by every input option of every command, the same way,
never as a plain "file not found" that hides the link; exit 2, nothing written."""
from __future__ import annotations

import os

import pytest

from echomimic_lib.cli import main
from echomimic_lib.io.os_errors import missing_text

DATA = "/work/shared/data"
IMAGE, SPEECH, VIDEO = f"{DATA}/images/portrait_a.png", f"{DATA}/audio/echomimic_en.wav", f"{DATA}/video/driving_a.mp4"

# (command line with {link} for the input under test, the option named); {d}: the test's folder
CASES = [
    (["animate", "--reference", "{link}", "--audio", SPEECH, "-o", "{d}/o.mp4", "--smoke"], "--reference"),
    (["animate", "--reference", IMAGE, "--audio", "{link}", "-o", "{d}/o.mp4", "--smoke"], "--audio"),
    (["animate", "--reference", IMAGE, "--audio", SPEECH, "--mode", "landmarks", "--landmarks", "{link}", "-o",
      "{d}/o.mp4", "--smoke"], "--landmarks"),
    (["animate", "--reference", IMAGE, "--audio", SPEECH, "--version", "v2", "--pose", "{link}", "-o", "{d}/o.mp4",
      "--smoke"], "--pose"),
    (["dub", "--video", "{link}", "--audio", SPEECH, "-o", "{d}/o.mp4"], "--video"),
    (["dub", "--video", VIDEO, "--audio", "{link}", "-o", "{d}/o.mp4"], "--audio"),
    (["evaluate", "{link}"], "VIDEO"),
    (["evaluate", VIDEO, "--compare", "{link}"], "--compare"),
    (["evaluate", VIDEO, "--audio", "{link}"], "--audio"),
    (["evaluate", VIDEO, "--reference", "{link}"], "--reference"),
    (["evaluate", VIDEO, "--landmarks", "{link}"], "--landmarks"),
    (["evaluate", VIDEO, "--real", "{link}"], "--real"),
    (["landmarks", "{link}", "-o", "{d}/o.npz"], "VIDEO"),
    (["landmarks", VIDEO, "-o", "{d}/o.npz", "--preview", "{d}/p.mp4", "--reference", "{link}"], "--reference"),
    (["poses", "--video", "{link}", "-o", "{d}/o.npz"], "--video"),
    (["poses", "--audio", "{link}", "-o", "{d}/o.npz"], "--audio"),
    (["poses", "--video", VIDEO, "-o", "{d}/o.npz", "--preview", "{d}/p.mp4", "--preview-audio", "{link}"],
     "--preview-audio"),
]
IDS = [f"{argv[0]}{flag}" for argv, flag in CASES]

needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="shared media not here")
needs_links = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


def _run(argv, tmp_path, link, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = main([w.format(d=out, link=link) for w in argv])
    return rc, capsys.readouterr().err, out


@needs_data
@needs_links
@pytest.mark.parametrize("argv,flag", CASES, ids=IDS)
def test_a_link_to_nothing_is_named_with_where_it_points(argv, flag, tmp_path, capsys):
    gone = tmp_path / "moved" / "input.file"  # the file the link still names, moved away
    link = tmp_path / "input.file"
    link.symlink_to(gone)
    rc, err, out = _run(argv, tmp_path, link, capsys)
    assert rc == 2 and err.startswith(f"error: {flag} {link}: is a link to {gone}, which does not exist"), err
    assert "not found" not in err and "Traceback" not in err
    assert list(out.iterdir()) == []


@needs_data
@needs_links
@pytest.mark.parametrize("argv,flag", CASES, ids=IDS)
def test_a_relative_link_names_where_its_target_would_be(argv, flag, tmp_path, capsys):
    """``ln -s ../media/x.mp4 x.mp4``: the link's own words and the place they mean (the link's folder, not the cwd)."""
    link = tmp_path / "in" / "x.file"
    link.parent.mkdir()
    link.symlink_to(os.path.join("..", "media", "x.file"))
    rc, err, out = _run(argv, tmp_path, link, capsys)
    where = os.path.join(tmp_path, "media", "x.file")
    assert rc == 2 and f"{flag} {link}: is a link to ../media/x.file ({where}), which does not exist" in err, err


@needs_data
@needs_links
@pytest.mark.parametrize("argv,flag", CASES[:1] + CASES[4:5] + CASES[6:7], ids=IDS[:1] + IDS[4:5] + IDS[6:7])
def test_a_missing_file_is_still_said_as_missing(argv, flag, tmp_path, capsys):
    rc, err, _ = _run(argv, tmp_path, tmp_path / "no.file", capsys)
    assert rc == 2 and "not found" in err and "link" not in err, err


@needs_links
def test_missing_text(tmp_path):
    assert missing_text(tmp_path / "none") == "file not found"
    assert missing_text(tmp_path / "none", "not found") == "not found"
    a, b = tmp_path / "a", tmp_path / "b"
    a.symlink_to(b)
    assert missing_text(a) == f"is a link to {b}, which does not exist"
    b.symlink_to(tmp_path / "c")  # a chain: the last name, the one that is missing
    assert missing_text(a) == f"is a link to {b} (a link to {tmp_path / 'c'}), which does not exist"
    (tmp_path / "c").symlink_to(a)  # a loop
    assert missing_text(a).startswith("is a link that loops back on itself")


@needs_links
def test_a_link_to_something_there_keeps_the_callers_words(tmp_path):
    """Readers that test ``is_file()`` call it for a link to a folder or a pipe too: that is no link to nothing."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "folder")
    assert missing_text(tmp_path / "l") == "file not found"
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "p").symlink_to(tmp_path / "pipe")
    assert missing_text(tmp_path / "p", "not found") == "not found"


# -- 2. evaluate --plot replaces an existing PNG, as animate / dub -o replace an existing video (results made again at
# will, written whole under a temporary name, never over a folder or device); landmarks / poses -o, make-tiny and
# convert write files other runs read and ask for --force. The help says which --plot is. --------------------------
def _help(command, dest):
    import argparse

    from echomimic_lib.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return next(a.help for a in sub.choices[command]._actions if a.dest == dest)


def test_plot_help_says_an_existing_png_is_replaced_as_animate_output_is():
    plot, animate = _help("evaluate", "plot"), _help("animate", "output")
    assert "existing" in plot and "replaced" in plot and "-o" in plot, plot
    assert "force" not in animate.lower()  # animate's -o has no --force: the rule --plot follows
