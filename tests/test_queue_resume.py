"""``echomimic queue`` stopped while waiting (Ctrl-C, a closed SSH session) is picked up with ``--resume``: the prompts
it queued are waited for, not queued again (no double GPU work); only a prompt the server lost in a restart is queued
again. And a prompt ComfyUI accepts (200) whose ``node_errors`` still name nodes (server.py ``post_prompt``: those
outputs failed validation and do not run) is warned of, one line a node, as a refusal is."""
from __future__ import annotations

import json

from tests.test_batch_hunt_5 import _queue, comfy, media  # noqa: F401  (comfy, media: the stand-in server's fixtures)


def _interrupt_when_waiting(monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(qc.time, "sleep", interrupt)


def test_ctrl_c_then_resume_queues_nothing_twice_and_collects_every_output(comfy, media, capsys, monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    state["how"] = {"p1": "pending", "p2": "pending"}
    _interrupt_when_waiting(monkeypatch)
    assert _queue(url, media, "--wait") == 130
    err = capsys.readouterr().err
    assert "ComfyUI still has 2 prompt(s) of this run: p1, p2" in err and "the same command with --resume" in err
    saved = json.loads((media[0] / ".echomimic_queue.json").read_text())["servers"][url]
    assert {k: v["prompt_id"] for k, v in saved.items()} == {"echomimic/anna__hello": "p1", "echomimic/bob__hello": "p2"}

    state["how"] = {"p1": "ok", "p2": "pending"}  # p1 finished while nobody waited; p2 finishes while waited for
    monkeypatch.setattr(qc.time, "sleep", lambda s: state["how"].update(p2="ok"))
    assert _queue(url, media, "--resume") == 0
    out = capsys.readouterr().out
    assert state["prompts"] == ["p1", "p2"]  # nothing queued twice
    assert "anna.png x hello.wav -> echomimic/anna__hello [p1] echomimic/p1.mp4" in out
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4" in out


def test_after_a_server_restart_resume_queues_again_only_the_lost_prompts(comfy, media, capsys, monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    state["how"] = {"p2": "pending"}  # p1 finishes and is collected; Ctrl-C while waiting for p2
    _interrupt_when_waiting(monkeypatch)
    assert _queue(url, media, "--wait") == 130
    capsys.readouterr()
    state["how"] = {"p1": "lost", "p2": "lost"}  # restarted: ComfyUI's queue and history are gone
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    assert _queue(url, media, "--resume") == 0
    out = capsys.readouterr().out
    assert state["prompts"] == ["p1", "p2", "p3"]  # p1's video was collected: not rendered again; p2 queued again
    assert "echomimic/anna__hello [p1] echomimic/p1.mp4" in out and "echomimic/bob__hello [p3] echomimic/p3.mp4" in out


def test_resume_queues_a_changed_job_anew_and_a_plain_rerun_queues_everything(comfy, media, capsys, tmp_path):
    url, state = comfy
    book = tmp_path / "elsewhere.json"
    assert _queue(url, media, "--state", str(book)) == 0 and state["prompts"] == ["p1", "p2"]
    assert not (media[0] / ".echomimic_queue.json").exists() and book.is_file()
    assert _queue(url, media, "--state", str(book), "--resume") == 0 and len(state["prompts"]) == 2
    assert _queue(url, media, "--state", str(book), "--resume", "--seed", "7") == 0  # another prompt: queued
    assert len(state["prompts"]) == 4
    assert _queue(url, media, "--state", str(book)) == 0 and len(state["prompts"]) == 6  # no --resume: as before
    capsys.readouterr()


def test_a_state_path_that_is_not_a_file_is_never_replaced(comfy, media, capsys, tmp_path):
    url, state = comfy
    (tmp_path / "dir").mkdir()
    assert _queue(url, media, "--state", str(tmp_path / "dir")) == 0 and (tmp_path / "dir").is_dir()
    assert "cannot keep the queue state" in capsys.readouterr().err and state["prompts"] == ["p1", "p2"]


def test_resume_over_several_servers_is_taken_and_says_when_none_answers(media, capsys, tmp_path):
    """(--resume over several servers was refused; tests/test_queue_resume_2.py shows it resume each server's jobs.)"""
    assert _queue("http://127.0.0.1:9", media, "--server", "http://127.0.0.1:10", "--resume",
                  "--results", str(tmp_path)) == 1  # each job: an error (its results.jsonl in tmp_path, not the checkout)
    err = capsys.readouterr().out
    assert "--resume and --state are for one --server" not in err and "no ComfyUI server answers" in err, err


def test_a_prompt_accepted_with_node_errors_is_warned_of_naming_the_nodes(comfy, media, capsys):
    url, state = comfy
    state["answers"] = [(200, {"prompt_id": "p1", "number": 1, "node_errors": {
        "9": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "format: 'gif' not in "
                          "['mp4']", "extra_info": {"input_name": "format"}}], "dependent_outputs": ["30"],
              "class_type": "SaveVideo"}}})]
    state["prompts"].append("p1")
    assert _queue(url, media) == 0
    err = capsys.readouterr().err
    assert f"warning: {url} queued prompt p1, but the outputs depending on these nodes failed validation" in err
    assert "  node 9 (SaveVideo), input 'format': Value not in list: format: 'gif' not in ['mp4']\n" in err
    assert err.count("warning:") == 1  # p2's empty node_errors: nothing said
