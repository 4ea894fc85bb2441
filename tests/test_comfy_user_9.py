"""A ComfyUI graph builder's walk, day 9: a huge list (another pack's batch of objects) linked into a text input made
the type check write the repr of every item (millions of calls, all of it held in memory) only to show 60 characters
of it; the folder stamp's stat line is written in one place (review)."""
from __future__ import annotations

import os

from tests._pack import load_pack, sub

N = load_pack().NODE_CLASS_MAPPINGS
base = sub("nodes.base")
paths = sub("nodes.paths")


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
