"""``echomimic batch --set KEY=VALUE`` against the manifest's own cells: a value the row gives wins, an empty cell (CSV),
a blank string or a JSON null (JSONL) means "not given" and leaves the ``--set`` value, whether the column and the
``--set`` key are spelled with ``-`` or ``_`` (the same or different spellings). Weight-free: only the manifest is read."""
from __future__ import annotations

import json

import pytest

from echomimic_lib.cli import build_parser
from echomimic_lib.cli.batch import _defaults
from echomimic_lib.jobs.animate import AnimateRequest
from echomimic_lib.jobs.batch import crossed, read_manifest

SETS = {"deep-cache": "3", "deep-cache-branch": "1", "steps": "7", "seed": "11", "width": "96", "cfg": "2.0"}
FIELDS = {"deep-cache": "deep_cache", "deep-cache-branch": "deep_cache_branch", "steps": "steps", "seed": "seed",
          "width": "width", "cfg": "cfg"}
WANT = {"deep_cache": 3, "deep_cache_branch": 1, "steps": 7, "seed": 11, "width": 96, "cfg": 2.0}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "ref.png").write_bytes(b"picture")  # read_manifest checks that inputs exist, not what they hold
    (tmp_path / "speech.wav").write_bytes(b"speech")
    return tmp_path


def _sets(spelling: str) -> dict:
    items = [f"{k if spelling == '-' else k.replace('-', '_')}={v}" for k, v in SETS.items()]
    return _defaults(build_parser().parse_args(["batch", "rows.csv", "-o", "out", *sum((["--set", i] for i in items), [])]))


def _got(job) -> dict:
    return {f: getattr(job.request, f) for f in WANT}


@pytest.mark.parametrize("header", ["-", "_"])
@pytest.mark.parametrize("set_spelling", ["-", "_"])
def test_an_empty_csv_cell_leaves_the_set_value_in_either_spelling(folder, header, set_spelling):
    cols = [k if header == "-" else k.replace("-", "_") for k in SETS]
    own = {"deep-cache": "2", "deep-cache-branch": "4", "steps": "5", "seed": "9", "width": "128", "cfg": "1.5"}
    (folder / "rows.csv").write_text(
        "name,reference,audio," + ",".join(cols) + "\n"
        "empty,ref.png,speech.wav" + "," * len(cols) + "\n"
        "blank,ref.png,speech.wav" + ",  " * len(cols) + "\n"
        "own,ref.png,speech.wav," + ",".join(own[k] for k in SETS) + "\n"
        "mixed,ref.png,speech.wav,,5,,9,,\n")
    jobs = {j.name: j for j in read_manifest(folder / "rows.csv", folder / "out", _sets(set_spelling))}
    assert _got(jobs["empty"]) == WANT and _got(jobs["blank"]) == WANT
    assert _got(jobs["own"]) == {FIELDS[k]: type(WANT[FIELDS[k]])(float(v)) for k, v in own.items()}  # the row's own wins
    assert _got(jobs["mixed"]) == dict(WANT, deep_cache_branch=5, seed=9)


@pytest.mark.parametrize("key_spelling", ["-", "_"])
def test_a_blank_or_null_jsonl_value_leaves_the_set_value(folder, key_spelling):
    def k(name):
        return name if key_spelling == "-" else name.replace("-", "_")

    rows = [{"name": "blank", "reference": "ref.png", "audio": "speech.wav", **{k(c): "" for c in SETS}},
            {"name": "null", "reference": "ref.png", "audio": "speech.wav", **{k(c): None for c in SETS}},
            {"name": "own", "reference": "ref.png", "audio": "speech.wav", k("deep-cache-branch"): 6, k("steps"): 4}]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for spelling in ("-", "_"):
        jobs = {j.name: j for j in read_manifest(folder / "rows.jsonl", folder / "out", _sets(spelling))}
        assert _got(jobs["blank"]) == WANT and _got(jobs["null"]) == WANT
        assert _got(jobs["own"]) == dict(WANT, deep_cache_branch=6, steps=4)


def test_an_empty_set_value_is_not_given_and_an_empty_name_cell_gets_the_default_name(folder):
    (folder / "rows.csv").write_text("reference,audio,steps,name\nref.png,speech.wav,,\nref.png,speech.wav,,\n")
    args = build_parser().parse_args(["batch", "rows.csv", "-o", "out", "--set", "steps=", "--set", "seed=5"])
    jobs = read_manifest(folder / "rows.csv", folder / "out", _defaults(args))
    default = AnimateRequest(reference="r", audio=None, output="o").steps
    assert [j.request.steps for j in jobs] == [default, default] and [j.request.seed for j in jobs] == [5, 5]
    assert [j.name for j in jobs] == ["ref__speech", "ref__speech-3"]  # a repeated default name gets its line


def test_crossed_folders_take_the_set_values_in_either_spelling(folder):
    (folder / "imgs").mkdir()
    (folder / "auds").mkdir()
    (folder / "imgs" / "a.png").write_bytes(b"picture")
    (folder / "auds" / "a.wav").write_bytes(b"speech")
    for spelling in ("-", "_"):
        (job,) = crossed(folder / "out", folder / "auds", images=folder / "imgs", defaults=_sets(spelling))
        assert _got(job) == WANT
