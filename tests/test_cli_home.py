"""``~`` that no shell expanded (``--reference=~/me.png``) is the home folder, in ``echomimic`` and
``echomimic-train``; a V3 prompt that starts with ``~/`` is text and stays as written."""
import argparse

from echomimic_lib.cli import main as cli
from echomimic_lib.cli.common import expand_home


def test_a_leading_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    args = expand_home(argparse.Namespace(reference="~/me.png", models="~", lora=["~/a.safetensors", "b.safetensors"],
                                          audio="a~/b.wav", other="~user", prompt="~/not a path", steps=4))
    assert args.reference == str(tmp_path / "me.png") and args.models == str(tmp_path)
    assert args.lora == [str(tmp_path / "a.safetensors"), "b.safetensors"]
    assert (args.audio, args.other, args.prompt, args.steps) == ("a~/b.wav", "~user", "~/not a path", 4)


def test_animate_reads_a_reference_given_after_an_equals_sign(tmp_path, monkeypatch, capsys):
    """The missing file is named by its place in the home folder: the command looked there, not for './~/me.png'."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code = cli(["animate", "--reference=~/me.png", "--audio=~/hi.wav", "--output", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "home" / "hi.wav") in err, err  # the audio is checked first
    assert not (tmp_path / "out.mp4").exists()
