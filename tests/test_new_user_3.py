"""A new user following README.md with tiny random weights and the shared media: the mistakes that tripped them.

Each test is one problem found that way: the message names the problem and the fix, before any work."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main as cli


# 1. A misspelt option was said by the top-level parser ("usage: echomimic [-h] [-v] COMMAND ...") with no hint of
#    the option meant: the sub-command's usage and the close option are named now (echomimic and echomimic-train).
@pytest.mark.parametrize("argv,prog,wrong,meant", [
    (["animate", "--refrence", "r.png", "--audio", "a.wav", "-o", "o.mp4"], "echomimic animate", "--refrence", "--reference"),
    (["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--lenght=8"], "echomimic animate", "--lenght",
     "--length"),
    (["poses", "--audio", "a.wav", "-o", "t.npz", "--expresiveness", "1"], "echomimic poses", "--expresiveness",
     "--expressiveness"),
    (["dub", "--video", "v.mp4", "-o", "d.mp4", "--referencee-frame", "3"], "echomimic dub", "--referencee-frame",
     "--reference-frame"),
])
def test_a_misspelt_option_names_the_option_meant(argv, prog, wrong, meant, capsys):
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert f"usage: {prog}" in err and f"{prog}: error: unrecognized arguments: {wrong}" in err, err
    assert f"{wrong}: did you mean {meant}?" in err, err


def test_an_unknown_word_without_a_close_option_is_still_named_without_a_guess(capsys):
    assert cli(["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", "--frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "echomimic animate: error: unrecognized arguments: --frobnicate" in err and "did you mean" not in err, err


def test_the_trainer_names_the_option_meant_too(capsys):
    from trainer.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["fit", "--config", "run.yaml", "--resmue"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "echomimic-train fit: error: unrecognized arguments: --resmue" in err, err
    assert "--resmue: did you mean --resume?" in err, err
