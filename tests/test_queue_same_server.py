"""``echomimic queue --server http://host:port --server http://host:port/``: one server written twice (a trailing
slash) was taken for two, and the jobs went through the several-servers run (its results.jsonl, its own waiting) with
one server. The addresses are compared as the queue sends to them: one server, the one-server run."""
import pytest

from tests.test_batch_hunt_5 import _queue, comfy, media  # noqa: F401  (the stand-in server's fixtures)


def test_one_server_given_twice_is_one_server(comfy, media, monkeypatch, tmp_path):  # noqa: F811
    from echomimic_lib.jobs.batch import comfy_servers

    monkeypatch.setattr(comfy_servers, "queue_spread",
                        lambda *a, **k: pytest.fail("one server given twice went through the several-servers run"))
    url, state = comfy
    assert _queue(url, media, "--server", url + "/", "--results", str(tmp_path / "r")) == 0
    assert len(state["prompts"]) == 2  # (anna and bob, once each)


def test_two_addresses_of_one_machine_stay_two_servers(comfy, media, monkeypatch, tmp_path):  # noqa: F811
    from echomimic_lib.jobs.batch import comfy_servers

    seen = []
    monkeypatch.setattr(comfy_servers, "queue_spread", lambda client, wf, p, a, servers, *rest, **k: seen.append(servers) or [])
    url, state = comfy
    other = url.replace("127.0.0.1", "localhost")
    assert _queue(url, media, "--server", other, "--results", str(tmp_path / "r")) == 0
    assert seen and len(seen[0]) == 2
