"""``--stabilize``: one option for both drivers, checked before any model loads."""
import pytest

from echomimic_lib.cli import build_parser
from echomimic_lib.errors import EchoMimicError
from echomimic_lib.jobs.animate_checks import check_stabilize
from echomimic_lib.modes import get_mode
from echomimic_lib.temporal import STABILIZE_DEFAULT, STABILIZE_LEVELS


def _animate(*extra):
    return build_parser().parse_args(["animate", "--reference", "r.png", "--audio", "a.wav", "-o", "o.mp4", *extra])


def test_the_default_is_off_and_reaches_the_request():
    from echomimic_lib.cli.animate import request_from_args

    assert STABILIZE_DEFAULT == "off" and _animate().stabilize == "off"
    assert request_from_args(_animate("--version", "v2", "--pose", "p", "--stabilize", "strong")).stabilize == "strong"


def test_an_unknown_level_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _animate("--stabilize", "max")
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["v1-landmarks", "v1-audio+landmarks", "v2-halfbody"])
def test_every_level_is_accepted_where_keypoints_are_drawn(mode):
    for level in STABILIZE_LEVELS:
        assert check_stabilize(level, get_mode(mode)) == level


def test_audio_only_mode_refuses_it_and_unknown_levels_are_named():
    with pytest.raises(EchoMimicError, match="draws neither"):
        check_stabilize("light", get_mode("v1-audio"))
    assert check_stabilize("off", get_mode("v1-audio")) == "off"
    with pytest.raises(EchoMimicError, match="use one of off, light"):
        check_stabilize("max", get_mode("v2-halfbody"))


def test_v3_refuses_it_by_name_before_reading_any_file(tmp_path, capsys):
    from echomimic_lib.cli import main

    base = ["animate", "--reference", str(tmp_path / "none.png"), "--audio", str(tmp_path / "none.wav"),
            "-o", str(tmp_path / "x.mp4"), "--models", str(tmp_path), "--offline", "--version", "v3-flash"]
    assert main(base + ["--stabilize", "light"]) == 2
    assert "--stabilize is a V1/V2 option" in capsys.readouterr().err
    assert main(base + ["--stabilize", "off"]) == 2  # the default said aloud is no V1/V2 option: the next check speaks
    assert "none.png" in capsys.readouterr().err
