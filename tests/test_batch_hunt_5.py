"""Studio batches and HTTP-API queuers, round 5: row names in any script become file names that keep their letters
(one rule for ``echomimic batch`` and ``echomimic queue``), one ``cuda:N`` parser, and what a queuer meets on a real
ComfyUI (no server, a restart, a rejected prompt, a 500, a failed execution, Ctrl-C), against a stand-in server."""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.io.file_names import safe_file_name
from tests._media import write_wav


@pytest.fixture
def folder(tmp_path, shared_data):
    (tmp_path / "anna.png").write_bytes((shared_data / "images" / "portrait_a.png").read_bytes())
    t = np.arange(8000) / 16000
    write_wav(tmp_path / "en.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))
    return tmp_path


def _manifest(folder: Path, names: list[str]) -> Path:
    path = folder / "jobs.jsonl"
    rows = [{"name": n, "reference": "anna.png", "audio": "en.wav"} for n in names]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _names(folder: Path, names: list[str]) -> list[str]:
    from echomimic_lib.jobs.batch.manifest import read_manifest

    return [j.output.name for j in read_manifest(_manifest(folder, names), folder / "out")]


# --------------------------------------------------------------------------------------------------- row names
def test_names_in_any_script_keep_their_letters(folder):
    """'東京_take1' was written as '_take1.mp4' and 'Žofie' as 'ofie.mp4'; 'Анна' and 'Иван' both as 'job.mp4'."""
    names = ["東京_take1", "Žofie", "Анна", "Иван", "Ελένη", "मैं_हूँ", "José-2"]
    assert _names(folder, names) == [f"{unicodedata.normalize('NFC', n)}.mp4" for n in names]


def test_a_name_in_nfd_is_the_nfc_file_and_collides_with_its_nfc_twin(folder):
    from echomimic_lib.jobs.batch.manifest import ManifestError

    nfd = unicodedata.normalize("NFD", "café")
    assert _names(folder, [nfd]) == ["café.mp4"] and unicodedata.is_normalized("NFC", _names(folder, [nfd])[0])
    with pytest.raises(ManifestError) as exc:  # macOS stores both as one file; refused, not one overwriting the other
        _names(folder, ["café", nfd])
    assert "line 2: name 'café' is also used on line 1" in str(exc.value)


@pytest.mark.parametrize("names, shown", [
    (["東京/a", "東京_a"], "name '東京_a' is file 東京_a.mp4, as is line 1's '東京/a'"),
    (["ÉCOLE", "école"], "name 'école' is also used on line 1 (names differing only in case"),
])
def test_names_equal_after_cleaning_or_in_case_are_refused_naming_both(names, shown, folder):
    from echomimic_lib.jobs.batch.manifest import ManifestError

    with pytest.raises(ManifestError) as exc:
        _names(folder, names)
    assert f"line 2: {shown}" in str(exc.value)


@pytest.mark.parametrize("text, expected", [
    ('a/b\\c:d*e?f"g<h>i|j', "a_b_c_d_e_f_g_h_i_j"),
    ("tab\there\x00nul\x7f", "tab_here_nul"),
    ("ends with dots... ", "ends_with_dots"),
    ("CON", "_CON"), ("nul.take", "_nul.take"), ("COM¹", "_COM¹"), ("LPT9", "_LPT9"), ("COM10", "COM10"),
    ("   ", "job"), ("...", "job"),
])
def test_what_file_systems_refuse_is_replaced(text, expected):
    assert safe_file_name(text) == expected


def test_long_names_are_bounded_in_utf8_bytes_between_whole_letters(folder, tmp_path):
    long_cjk = "東" * 150  # 450 bytes: 'File name too long' when the finished video was moved into place
    name = safe_file_name(long_cjk)
    assert len((name + ".mp4").encode()) <= 255 and set(name) == {"東"}
    accented = "x" * 119 + "q\u0301" * 2  # q + accent has no one-letter form: the cut falls between q and its accent
    assert safe_file_name(accented) == "x" * 119  # the bare q goes too, not a different letter left behind
    assert safe_file_name("x" * 118 + "q\u0301" * 2) == "x" * 118 + "q\u0301"
    (tmp_path / (safe_file_name(long_cjk) + ".mp4")).write_bytes(b"")  # the OS takes it
    assert _names(folder, [long_cjk]) == [f"{safe_file_name(long_cjk)}.mp4"]
    assert safe_file_name("a" * 120) == "a" * 120 and safe_file_name("a" * 130) == "a" * 120  # ASCII names as before


def test_ascii_names_are_unchanged_so_finished_rows_stay_found(folder):
    assert _names(folder, ["anna_en", "take 1", "v2+acc.final", "-x-"]) == \
        ["anna_en.mp4", "take_1.mp4", "v2+acc.final.mp4", "-x-.mp4"]


# ------------------------------------------------------------------------------------------ queue output prefixes
def test_queue_prefixes_use_the_same_rule_and_stay_distinct(tmp_path):
    from echomimic_lib.jobs.queue_client import plan_jobs

    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    for name in ("東京.png", "take:1.png", "take_1.png", "a" * 200 + ".png"):
        (faces / name).write_bytes(b"x")
    (speech / ("é" * 120 + ".wav")).write_bytes(b"x")
    prefixes = [j.prefix for j in plan_jobs(faces, speech)]
    assert len({p.casefold() for p in prefixes}) == 4
    assert all(len((p.split("/")[-1] + "_00001_.mp4").encode()) <= 255 for p in prefixes)  # ComfyUI's counter added
    assert any(p.startswith("echomimic/東京__") for p in prefixes) and not any(":" in p for p in prefixes)


# ------------------------------------------------------------------------------------------------------ --device
def test_the_batch_reads_cuda_n_as_the_single_commands_do(monkeypatch):
    """``--device CUDA:1`` is a device to ``echomimic animate`` (resolve_device) but the batch's own regex refused it
    ("use auto, cpu, cuda or a list"): one parser now, devices.parse_device, read for every name of the list."""
    import torch

    import echomimic_lib.devices as devices
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.jobs.batch.runner import BatchOptions, worker_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert devices.resolve_device("CUDA:1") == torch.device("cuda", 1)
    assert worker_devices(BatchOptions(device="CUDA:1, Cuda:0")) == ["cuda:1", "cuda:0"]
    from echomimic_lib.jobs.batch.ray_backend import check_device

    check_device(BatchOptions(device=" CUDA ").device)  # with Ray too (it refused 'CUDA': "use auto, cpu or cuda")
    seen = []
    real = devices.parse_device
    monkeypatch.setattr(devices, "parse_device", lambda name: (seen.append(name), real(name))[1])
    assert worker_devices(BatchOptions(device="cuda:0,cuda:1")) == ["cuda:0", "cuda:1"] and seen == ["cuda:0", "cuda:1"]
    for device, words in (("cuda:0,mps", "'mps' is not a GPU; write each as cuda:N"),
                          ("cuda:01,cuda:1", "names cuda:1 twice"), ("cuda:0,cuda:7", "there is no cuda:7; this machine has 2")):
        with pytest.raises(EchoMimicError, match=words):
            worker_devices(BatchOptions(device=device))


# ------------------------------------------------------------------------------------- HTTP-API queuer, stand-in
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "v1_audio.json"


def _comfy_handler(state: dict):
    """A stand-in of ComfyUI's HTTP API with its reply shapes (server.py post_prompt / get_queue / get_history,
    execution.py's status messages): ``state`` says how each prompt goes ("ok", "error", "lost": gone from queue and
    history as after a restart, "pending": stays queued) and which /prompt answers fail first."""
    from tests._http_stub import JsonHandler

    class Comfy(JsonHandler):
        def _text(self, code: int, text: str, headers=()):
            data = text.encode()
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/upload/image":
                name = body.split(b'filename="', 1)[1].split(b'"', 1)[0].decode()
                return self._reply(200, {"name": name, "subfolder": "", "type": "input"})
            if self.path == "/prompt":
                answers = state.setdefault("answers", [])
                if answers:
                    code, reply = answers.pop(0)
                    if isinstance(reply, str):
                        return self._text(code, reply, [("Retry-After", "0")] if code in (429, 503) else [])
                    return self._reply(code, reply)
                pid = f"p{len(state['prompts']) + 1}"
                state["prompts"].append(pid)
                return self._reply(200, {"prompt_id": pid, "number": len(state["prompts"]), "node_errors": {}})
            self._reply(404, {})

        def do_GET(self):
            how = state.get("how", {})
            if self.path in ("/queue", "/prompt"):  # (GET /prompt: the depth, as ComfyUI's get_queue_info says it)
                items = [[n, pid, {}, {}, []] for n, pid in enumerate(state["prompts"]) if how.get(pid) == "pending"]
                if self.path == "/prompt":
                    return self._reply(200, {"exec_info": {"queue_remaining": len(items)}})
                return self._reply(200, {"queue_running": items[:1], "queue_pending": items[1:]})
            pid = self.path.rsplit("/", 1)[-1]
            kind = how.get(pid, "ok")
            if kind in ("lost", "pending") or pid not in state["prompts"]:
                return self._reply(200, {})
            if kind == "error":
                return self._reply(200, {pid: {"outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_start", {"prompt_id": pid}],
                    ["execution_error", {"prompt_id": pid, "node_id": "12", "node_type": "EchoMimicSampler",
                                         "exception_message": "CUDA out of memory. Tried to allocate 2.00 GiB",
                                         "exception_type": "torch.OutOfMemoryError", "traceback": ["..."]}]]}}})
            return self._reply(200, {pid: {"status": {"status_str": "success", "completed": True}, "outputs": {
                "21": {"images": [{"filename": f"{pid}.mp4", "subfolder": "echomimic", "type": "output"}]}}}})

    return Comfy


@pytest.fixture
def comfy():
    from tests._http_stub import start

    state = {"prompts": []}
    url, stop = start(_comfy_handler(state))
    yield url, state
    stop()


@pytest.fixture
def media(tmp_path):
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir(), speech.mkdir()
    for name in ("anna.png", "bob.png"):
        (faces / name).write_bytes(b"img-" + name.encode())
    (speech / "hello.wav").write_bytes(b"aud")
    return faces, speech


def _queue(url, media, *extra):
    from echomimic_lib.jobs.queue_client import main as queue_main

    return queue_main([str(WORKFLOW), "--portraits", str(media[0]), "--audios", str(media[1]), "--server", url, *extra])


def test_no_server_is_one_line_naming_the_address_and_the_fix(media, capsys):
    assert _queue("http://127.0.0.1:9", media) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "http://127.0.0.1:9" in err and "is it running" in err and "--server" in err, err


def test_a_rejected_prompt_lists_each_node_by_id_class_and_input(comfy, media, capsys):
    url, state = comfy
    state["answers"] = [(400, {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                                         "validation", "details": "", "extra_info": {}}, "node_errors": {
        "3": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "version: 'v9' not in "
                          "['v1', 'v2']", "extra_info": {"input_name": "version"}}], "dependent_outputs": ["21"],
              "class_type": "EchoMimicModelLoader"},
        "7": {"errors": [{"type": "required_input_missing", "message": "Required input is missing", "details": "audio",
                          "extra_info": {"input_name": "audio"}}], "dependent_outputs": ["21"], "class_type": "LoadAudio"}}})]
    assert _queue(url, media) == 2
    err = capsys.readouterr().err
    assert "Prompt outputs failed validation\n" in err and "{" not in err
    assert "  node 3 (EchoMimicModelLoader), input 'version': Value not in list: version: 'v9' not in ['v1', 'v2']\n" in err
    assert "  node 7 (LoadAudio), input 'audio': Required input is missing\n" in err  # details = the input: said once


def test_a_refusal_without_node_errors_keeps_its_details(comfy, media, capsys):
    url, state = comfy
    state["answers"] = [(400, {"error": {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the "
                                         "class_type property.", "details": "Node ID '#5'", "extra_info": {}},
                               "node_errors": {}})]
    assert _queue(url, media) == 2
    assert "HTTP 400: Cannot execute because a node is missing the class_type property. (Node ID '#5')" in capsys.readouterr().err


def test_a_500_mid_queue_says_which_jobs_are_queued_and_which_are_not(comfy, media, capsys):
    url, state = comfy
    state["answers"] = [(200, {"prompt_id": "p1", "number": 1, "node_errors": {}}),
                        (500, "500 Internal Server Error\n\nServer got itself in trouble")]
    state["prompts"].append("p1")
    assert _queue(url, media) == 2
    out, err = capsys.readouterr()
    assert "anna.png x hello.wav -> echomimic/anna__hello [p1]" in out  # the one queued is listed, with its id
    assert "HTTP 500: 500 Internal Server Error Server got itself in trouble" in err
    assert "1 of 2 job(s) were queued before this" in err and "bob.png x hello.wav" in err and "not queued" in err


def test_a_busy_server_is_asked_again_after_its_retry_after(comfy, media, capsys):
    url, state = comfy
    state["answers"] = [(503, "queue full"), (429, "too many requests")]
    assert _queue(url, media) == 0
    assert state["prompts"] == ["p1", "p2"] and "[p2]" in capsys.readouterr().out


def test_an_execution_error_names_the_node_and_the_other_jobs_are_still_waited_for(comfy, media, capsys):
    url, state = comfy
    state["how"] = {"p1": "error"}
    assert _queue(url, media, "--wait") == 1
    out, err = capsys.readouterr()
    assert "[p1] prompt p1 failed: node 12 (EchoMimicSampler): CUDA out of memory. Tried to allocate 2.00 GiB" in out
    assert "bob.png x hello.wav -> echomimic/bob__hello [p2] echomimic/p2.mp4" in out


def test_a_server_restart_that_lost_the_prompt_is_said_not_waited_on_for_an_hour(comfy, media, capsys, monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    state["how"] = {"p2": "lost"}
    monkeypatch.setattr(qc.time, "sleep", lambda s: None)
    assert _queue(url, media, "--wait") == 1
    out, err = capsys.readouterr()
    assert "anna.png x hello.wav -> echomimic/anna__hello [p1] echomimic/p1.mp4" in out
    assert "prompt p2 is neither queued on nor in the history of" in out + err and "restarted" in out + err
    assert "queue it again" in out + err


def test_ctrl_c_while_waiting_says_which_prompts_are_still_queued_and_how_to_cancel(comfy, media, capsys, monkeypatch):
    from echomimic_lib.jobs import queue_client as qc

    url, state = comfy
    state["how"] = {"p2": "pending"}

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(qc.time, "sleep", interrupt)
    assert _queue(url, media, "--wait") == 130
    out, err = capsys.readouterr()
    assert "echomimic/anna__hello [p1] echomimic/p1.mp4" in out
    assert "Interrupted" in err and "ComfyUI still has 1 prompt(s) of this run: p2" in err
    assert f"{url}/queue" in err and '"delete": ["p2"]' in err and f"{url}/interrupt" in err


def test_over_several_servers_a_prompt_a_restart_lost_is_queued_again(media, tmp_path):
    """``--server A --server B``: a server that restarted answers again but has lost the prompt (neither in /queue nor
    in /history): the job waited out the whole hour, then was an error; now it is queued again and finishes."""
    from echomimic_lib.jobs import queue_client as qc
    from echomimic_lib.jobs.batch.comfy_servers import queue_spread
    from tests._http_stub import start

    states = [{"prompts": [], "how": {"p1": "lost"}}, {"prompts": []}]
    servers = [start(_comfy_handler(st)) for st in states]
    try:
        recs = queue_spread(qc, WORKFLOW, media[0], media[1], [u for u, _ in servers], tmp_path, poll=0.01, timeout=30)
    finally:
        for _, stop in servers:
            stop()
    assert [r["status"] for r in recs] == ["ok", "ok"], recs
    assert sorted(r["attempts"] for r in recs) == [1, 2] and sum(len(st["prompts"]) for st in states) == 3


def test_ctrl_c_over_several_servers_names_each_servers_prompts(media, tmp_path, capsys, monkeypatch):
    from echomimic_lib.jobs.batch import comfy_servers
    from tests._http_stub import start

    states = [{"prompts": [], "how": {"p1": "pending"}}, {"prompts": [], "how": {"p1": "pending"}}]
    servers = [start(_comfy_handler(st)) for st in states]

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(comfy_servers.time, "sleep", interrupt)
    try:
        rc = _queue(servers[0][0], media, "--server", servers[1][0], "--results", str(tmp_path))
    finally:
        for _, stop in servers:
            stop()
    err = capsys.readouterr().err
    assert rc == 130 and err.count("ComfyUI still has 1 prompt(s) of this run: p1") == 2, err
    assert all(f"{url}/queue" in err for url, _ in servers)
