"""The headless user, day 9: ``-o -`` (the Unix "write to stdout" habit) is refused as such -- the result is a file
written under a temporary name and renamed, never a stream -- instead of suggesting a file literally named ``-.mp4``;
exit 2, nothing written, before any weights are looked for."""
from __future__ import annotations

import pytest

from echomimic_lib.cli import main

DATA = "/work/shared/data"
IMAGE, SPEECH, VIDEO = f"{DATA}/images/portrait_a.png", f"{DATA}/audio/echomimic_en.wav", f"{DATA}/video/driving_a.mp4"

CASES = [
    (["animate", "--reference", IMAGE, "--audio", SPEECH, "-o", "-", "--smoke"], "-o"),
    (["dub", "--video", VIDEO, "--audio", SPEECH, "-o", "-"], "-o"),
    (["landmarks", VIDEO, "-o", "-"], "-o"),
    (["poses", "--video", VIDEO, "-o", "-"], "-o"),
    (["landmarks", VIDEO, "-o", "o.npz", "--preview", "-"], "--preview"),
    (["evaluate", VIDEO, "--plot", "-"], "--plot"),  # was: "give it the .png extension, e.g. --plot -.png"  # was taken as a pose folder named "-" (after a model download)
]


@pytest.mark.parametrize("argv,flag", CASES, ids=[c[0][0] for c in CASES])
def test_dash_output_is_refused_as_stdout(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECHOMIMIC_MODELS", str(tmp_path / "models"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} -: " in err and "stdout" in err, err
    assert "-.mp4" not in err and "-.npz" not in err, err
    assert list(tmp_path.iterdir()) == []
