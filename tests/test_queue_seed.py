"""``echomimic queue --seed N`` with a workflow that has no seed input: refused before any upload, naming the workflow
and the fix (it was silently ignored: every job rendered with the workflow's own seeds, the user none the wiser)."""
from __future__ import annotations

import json

from tests.test_batch_hunt_5 import WORKFLOW, _comfy_handler, media  # noqa: F401  (fixtures)
from tests.test_queue_state_5 import servers  # noqa: F401  (fixtures)


def _run(workflow, url, media, *extra):
    from echomimic_lib.jobs.queue_client import main as queue_main

    return queue_main([str(workflow), "--portraits", str(media[0]), "--audios", str(media[1]), "--server", url, *extra])


def _seedless(tmp_path):
    wf = json.loads(WORKFLOW.read_text())
    for node in wf.values():
        node["inputs"].pop("seed", None)
    path = tmp_path / "no_seed.json"
    path.write_text(json.dumps(wf))
    return path


def test_seed_with_a_workflow_without_a_seed_input_is_refused_before_any_upload(servers, media, tmp_path, capsys):
    url, state, _ = servers()
    assert _run(_seedless(tmp_path), url, media, "--seed", "7") == 2
    err = capsys.readouterr().err
    assert "no_seed.json" in err and "--seed" in err and "no seed input" in err, err
    assert state["prompts"] == [] and not (media[0] / ".echomimic_queue.json").exists()


def test_the_same_workflow_without_seed_and_the_shipped_one_with_seed_are_queued(servers, media, tmp_path):
    url, state, _ = servers()
    assert _run(_seedless(tmp_path), url, media) == 0
    assert len(state["prompts"]) == 2
    assert _run(WORKFLOW, url, media, "--seed", "7") == 0
    assert len(state["prompts"]) == 4


def test_seed_without_a_seed_input_is_refused_over_several_servers_too(servers, media, tmp_path, capsys):
    a_url, a_state, _ = servers()
    b_url, b_state, _ = servers()
    assert _run(_seedless(tmp_path), a_url, media, "--server", b_url, "--results", str(tmp_path / "r"),
                "--seed", "7") == 2
    assert "no seed input" in capsys.readouterr().err
    assert a_state["prompts"] == b_state["prompts"] == []
