"""A ComfyUI graph builder's walk, day 9: a huge list (another pack's batch of objects) linked into a text input made
the type check write the repr of every item (millions of calls, all of it held in memory) only to show 60 characters
of it; the folder stamp's stat line is written in one place (review)."""
from __future__ import annotations

import os

import pytest
import torch

from tests._pack import load_pack, sub

N = load_pack().NODE_CLASS_MAPPINGS
base = sub("nodes.base")
paths = sub("nodes.paths")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


class Counted:
    calls = 0

    def __repr__(self):
        Counted.calls += 1
        return "Counted()"


def test_a_huge_value_is_shown_without_writing_all_of_it():
    Counted.calls = 0
    problem = base.widget_type_problem(N["EchoMimicPartAwareAligner"], {"parts": [Counted() for _ in range(20000)]})
    assert problem.startswith("parts: takes text (STRING), but it is given [Counted()"), problem
    assert "(a list)" in problem and len(problem) < 400, problem
    assert Counted.calls < 100, Counted.calls  # only what is shown is written


def test_a_short_value_is_still_shown_whole():
    assert base._shown([1, 2, 3]) == "[1, 2, 3] (a list)"
    assert base._shown("abc") == "'abc' (a str)"
    assert base._shown(None) == "nothing (null)"
    long = base._shown("x" * 500)
    assert long.startswith("'xxx") and "..." in long and long.endswith("(a str)") and len(long) < 100


def test_the_folder_stamp_lines_are_unchanged(tmp_path):
    folder = tmp_path / "poses"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"12345")
    (folder / ".hidden").write_bytes(b"x")
    seq = tmp_path / "seq.npz"
    seq.write_bytes(b"123")
    out: list[str] = []
    paths._tree_lines(folder, 0, out)
    paths._tree_lines(seq, 0, out)
    paths._tree_lines(tmp_path / "missing", 0, out)
    st, sq = os.stat(folder / "a.npy"), os.stat(seq)
    assert out == [f"{folder}/", f"a.npy|5|{st.st_mtime_ns}", "sub/", f"{seq}|3|{sq.st_mtime_ns}",
                   f"{tmp_path / 'missing'}|unreadable"]


# --------------------------------------------------------------------- 2. broken audio refused before whisper is loaded
class Reached(Exception):
    """Raised where the node's own work would start (whisper placed on the device)."""


def _loud(*shape):
    return torch.sin(torch.linspace(0, 3000, shape[-1])).expand(*shape).clone() * 0.5


@pytest.mark.parametrize("wave, words", [
    (torch.full((1, 1, 16000), float("nan")), "NaN/Inf samples"),
    (torch.cat([_loud(1, 1, 8000), torch.full((1, 1, 8000), float("inf"))], -1), "NaN/Inf samples"),
    (_loud(2, 1, 16000), "a batch of 2 clips"),
    (torch.zeros(0, 1, 16000), "a batch of 0 clips"),
])
def test_broken_audio_is_refused_before_whisper_is_loaded(wave, words, monkeypatch):
    audio_node = sub("nodes.audio")

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(audio_node, "placement", reached)
    with pytest.raises(EchoMimicError, match=words):
        N["EchoMimicAudioEncoder"]().execute(object(), {"waveform": wave, "sample_rate": 16000}, 24.0)


def test_clean_audio_goes_on_to_whisper(monkeypatch):
    audio_node = sub("nodes.audio")

    def reached(*a, **k):
        raise Reached

    monkeypatch.setattr(audio_node, "placement", reached)
    for wave in (_loud(1, 1, 16000), _loud(1, 8, 16000), _loud(1, 16000)):
        with pytest.raises(Reached):
            N["EchoMimicAudioEncoder"]().execute(object(), {"waveform": wave, "sample_rate": 16000}, 24.0)
