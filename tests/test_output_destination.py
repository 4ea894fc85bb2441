"""One check for a file a command writes (:func:`echomimic_lib.jobs.output_file.check_destination`): animate's -o,
`echomimic landmarks` -o / --preview and `echomimic poses --preview` all go through it, each with its own wording
and its own extra refusals given as parameters."""
from __future__ import annotations

from pathlib import Path

import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.file_safety import ExistingFileError
from echomimic_lib.io.video_writer import OutputError
from echomimic_lib.jobs.output_file import OUTPUT_SUFFIXES, check_destination, check_output


def test_check_destination_refusals_in_order(tmp_path):
    src = tmp_path / "in.mp4"
    src.write_bytes(b"video")
    old = tmp_path / "old.mp4"
    old.write_bytes(b"old")
    ok = check_destination(tmp_path / "new.mp4", "--preview", OUTPUT_SUFFIXES, ".mp4", {"--video": src}, force=False)
    assert ok == tmp_path / "new.mp4" and not ok.exists()  # nothing is created
    with pytest.raises(OutputError, match="--preview .* is a directory"):
        check_destination(tmp_path, "--preview", OUTPUT_SUFFIXES, ".mp4")
    with pytest.raises(EchoMimicError, match="--preview .*in.mp4 is the same file as --video"):
        check_destination(src, "--preview", OUTPUT_SUFFIXES, ".mp4", {"--video": src}, force=True)
    with pytest.raises(EchoMimicError, match="^--preview and -o are the same path; give each its own name.$"):
        check_destination(tmp_path / "x.mp4", "--preview", OUTPUT_SUFFIXES, ".mp4", others={"-o": tmp_path / "x.mp4"})
    with pytest.raises(EchoMimicError) as exc:
        check_destination(tmp_path / "x.gif", "-o", (".npz", ".json"), ".npz")
    assert str(exc.value) == f"-o {tmp_path / 'x.gif'}: give it one of the extensions .npz, .json, e.g. -o {tmp_path / 'x.npz'}."
    with pytest.raises(EchoMimicError, match="^--preview .*x.gif: the preview is an mp4, e.g. --preview .*x.mp4.$"):
        check_destination(tmp_path / "x.gif", "--preview", OUTPUT_SUFFIXES, ".mp4", needs="the preview is an mp4")
    with pytest.raises(ExistingFileError) as exc:
        check_destination(old, "--preview", OUTPUT_SUFFIXES, ".mp4", force=False, what="video")
    assert str(exc.value).startswith(f"--preview {old} already exists") and "an existing video" in str(exc.value)
    assert "--force" in str(exc.value)
    assert check_destination(old, "--preview", OUTPUT_SUFFIXES, ".mp4", force=True) == old
    assert check_destination(old, "-o", OUTPUT_SUFFIXES, ".mp4") == old  # force=None: the caller's own rule
    assert old.read_bytes() == b"old"


def test_animate_output_check_keeps_its_words(tmp_path):
    audio = tmp_path / "a.mp4"
    audio.write_bytes(b"x")
    with pytest.raises(EchoMimicError) as exc:
        check_output(tmp_path / "o.avi")
    assert str(exc.value) == (f"-o {tmp_path / 'o.avi'}: the output is an H.264 mp4 video; give it the .mp4 extension, "
                              f"e.g. -o {tmp_path / 'o.mp4'}.")
    with pytest.raises(EchoMimicError, match="^-o .*a.mp4 is the same file as --audio"):
        check_output(audio, {"--audio": audio})
    assert check_output(audio) == audio  # an existing -o is animate's to judge (it overwrites)


def test_poses_preview_uses_the_shared_check(tmp_path):
    from echomimic_lib.jobs.poses import PosesRequest, _check_preview

    old = tmp_path / "old.mp4"
    old.write_bytes(b"old")
    req = PosesRequest(output=str(tmp_path / "p.npz"), video="v.mp4", preview=str(old))
    with pytest.raises(ExistingFileError) as exc:
        _check_preview(req, {}, tmp_path / "p.npz")
    assert str(exc.value).startswith(f"--preview {old} already exists")  # the flag named, as `echomimic landmarks` does
    with pytest.raises(EchoMimicError, match="^--preview .*p.gif: the preview is an H.264 mp4 video; end it in .mp4"):
        _check_preview(PosesRequest(output="p.npz", preview=str(tmp_path / "p.gif")), {}, tmp_path / "p.npz")
    link = tmp_path / "link.mp4"
    link.symlink_to(tmp_path / "seq.mp4")  # -o and --preview one file through a link
    with pytest.raises(EchoMimicError, match="^--preview and -o are the same path"):
        _check_preview(PosesRequest(output="x", preview=str(link)), {}, tmp_path / "seq.mp4")
    assert _check_preview(PosesRequest(output="p.npz"), {}, Path("p.npz")) is None
