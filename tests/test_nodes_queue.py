"""The batch-queue client against a tiny stand-in of ComfyUI's HTTP API on 127.0.0.1 (started and stopped here):
uploads, substitution into the shipped API workflows, POST /prompt, error reporting and --wait."""
from __future__ import annotations

import email.parser
import email.policy
import json
from pathlib import Path

import pytest

from echomimic_lib.jobs import queue_client as qc
from echomimic_lib.errors import EchoMimicError
from tests._http_stub import JsonHandler, start

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "api" / "v1_audio.json"


class FakeComfy(JsonHandler):
    uploads: list
    prompts: list
    stored: dict  # ComfyUI's input/ folder: name -> bytes
    reject = False

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/upload/image":
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
            fields = {p.get_param("name", header="content-disposition"): p for p in msg.iter_parts()}
            part = fields["image"]
            overwrite = fields["overwrite"].get_content().strip() if "overwrite" in fields else None
            name, data = part.get_filename(), part.get_payload(decode=True)
            self.uploads.append((name, data, overwrite))
            stem, dot, ext = name.rpartition(".")
            i = 0
            while overwrite != "true" and name in self.stored and self.stored[name] != data:  # ComfyUI's rule: same
                i += 1  # content -> the same name; other content -> "name (i).ext"
                name = f"{stem} ({i}){dot}{ext}"
            self.stored[name] = data
            return self._reply(200, {"name": name, "subfolder": "", "type": "input"})
        if self.path == "/prompt":
            payload = json.loads(body)
            if self.reject:
                return self._reply(400, {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {
                    "3": {"class_type": "EchoMimicModelLoader", "errors": [{"message": "Value not in list", "details": "version: 'V9'"}]}}})
            self.prompts.append(payload)
            return self._reply(200, {"prompt_id": f"p{len(self.prompts)}", "number": len(self.prompts), "node_errors": {}})
        self._reply(404, {})

    def do_GET(self):
        pid = self.path.rsplit("/", 1)[-1]
        self._reply(200, {pid: {"status": {"status_str": "success", "completed": True}, "outputs": {
            "21": {"images": [{"filename": f"{pid}.mp4", "subfolder": "echomimic", "type": "output"}], "animated": [True]}}}})


@pytest.fixture
def server():
    handler = type("Handler", (FakeComfy,), {"uploads": [], "prompts": [], "stored": {}, "reject": False})
    url, stop = start(handler)
    yield url, handler
    stop()


@pytest.fixture
def media(tmp_path):
    faces, speech = tmp_path / "faces", tmp_path / "speech"
    faces.mkdir()
    speech.mkdir()
    for name in ("anna.png", "bob.jpg"):
        (faces / name).write_bytes(b"img-" + name.encode())
    (faces / "notes.txt").write_text("not an image")
    for name in ("hello.wav", "bye.mp3"):
        (speech / name).write_bytes(b"aud-" + name.encode())
    return faces, speech


def test_every_portrait_times_every_audio_is_uploaded_once_and_queued(server, media):
    url, handler = server
    results = qc.queue_folder(WORKFLOW, *media, server=url, seed=5, wait=True)
    assert len(results) == 4 and len(handler.prompts) == 4
    assert sorted(u[0] for u in handler.uploads) == ["anna.png", "bob.jpg", "bye.mp3", "hello.wav"]
    assert all(u[2] is None and u[1].startswith(b"img-" if u[0].endswith(("png", "jpg")) else b"aud-") for u in handler.uploads)
    jobs = set()
    for payload in handler.prompts:
        prompt = payload["prompt"]
        nodes = {v["class_type"]: v["inputs"] for v in prompt.values()}
        jobs.add((nodes["LoadImage"]["image"], nodes["LoadAudio"]["audio"]))
        assert nodes["SaveVideo"]["filename_prefix"] == f"echomimic/{Path(nodes['LoadImage']['image']).stem}__" \
                                                       f"{Path(nodes['LoadAudio']['audio']).stem}"
        assert nodes["EchoMimicSampler"]["seed"] == 5 and payload["client_id"]
    assert jobs == {(i, a) for i in ("anna.png", "bob.jpg") for a in ("bye.mp3", "hello.wav")}
    assert [r["files"] for r in results] == [[f"echomimic/p{i}.mp4"] for i in range(1, 5)]


def test_uploads_never_replace_a_different_file_of_the_same_name(server, media):
    """Like ComfyUI's own uploader: no overwrite; the server keeps its anna.png and stores ours as 'anna (1).png',
    which the prompts then use; an identical hello.wav is reused under its name."""
    url, handler = server
    faces, speech = media
    handler.stored.update({"anna.png": b"someone else's picture", "hello.wav": (speech / "hello.wav").read_bytes()})
    qc.queue_folder(WORKFLOW, faces, speech, server=url)
    assert all(u[2] is None for u in handler.uploads)  # overwrite never requested
    assert handler.stored["anna.png"] == b"someone else's picture"
    assert handler.stored["anna (1).png"] == (faces / "anna.png").read_bytes()
    assert "hello (1).wav" not in handler.stored
    used = {(v["class_type"], v["inputs"].get("image", v["inputs"].get("audio"))) for pl in handler.prompts for v in pl["prompt"].values()
            if v["class_type"] in ("LoadImage", "LoadAudio")}
    assert ("LoadImage", "anna (1).png") in used and ("LoadImage", "anna.png") not in used
    assert ("LoadAudio", "hello.wav") in used


def test_the_template_is_not_modified_and_dry_run_sends_nothing(server, media):
    url, handler = server
    before = WORKFLOW.read_text()
    results = qc.queue_folder(WORKFLOW, *media, server=url, dry_run=True)
    assert len(results) == 4 and handler.uploads == [] and handler.prompts == []
    assert WORKFLOW.read_text() == before and results[0]["prompt"]["6"]["inputs"]["seed"] == 420


def test_validation_errors_from_the_server_are_explained(server, media):
    url, handler = server
    handler.reject = True
    with pytest.raises(EchoMimicError, match="HTTP 400: Prompt outputs failed validation\n  node 3 \\(EchoMimicModelLoader\\): Value not in list"):
        qc.queue_folder(WORKFLOW, *media, server=url)


def test_bad_inputs(tmp_path, media):
    with pytest.raises(EchoMimicError, match="not an API-format workflow"):
        qc.queue_folder(ROOT / "workflows" / "v1_audio.json", *media, dry_run=True)
    with pytest.raises(EchoMimicError, match="no audio files"):
        qc.queue_folder(WORKFLOW, media[0], tmp_path, dry_run=True)
    with pytest.raises(EchoMimicError, match="cannot reach ComfyUI"):
        qc.queue_folder(WORKFLOW, *media, server="http://127.0.0.1:9")


def test_cli_dry_run_lists_the_jobs(media, capsys):
    assert qc.main([str(WORKFLOW), "--portraits", str(media[0]), "--audios", str(media[1]), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "anna.png x bye.mp3 -> echomimic/anna__bye [dry run]" and len(lines) == 4


def test_videos_times_audios_fill_load_video_for_the_dubbing_workflow(server, media, tmp_path):
    url, handler = server
    people = tmp_path / "people"
    people.mkdir()
    for name in ("carl.mp4", "dana.mov"):
        (people / name).write_bytes(b"vid-" + name.encode())
    dub = ROOT / "workflows" / "api" / "v1_dub_video.json"
    results = qc.queue_folder(dub, None, media[1], server=url, videos=people)
    assert len(results) == len(handler.prompts) == 4
    jobs = set()
    for payload in handler.prompts:
        nodes = {v["class_type"]: v["inputs"] for v in payload["prompt"].values()}
        jobs.add((nodes["LoadVideo"]["file"], nodes["LoadAudio"]["audio"]))
        assert nodes["EchoMimicSaveDub"]["filename_prefix"] == f"echomimic/{Path(nodes['LoadVideo']['file']).stem}__" \
                                                       f"{Path(nodes['LoadAudio']['audio']).stem}"
    assert jobs == {(v, a) for v in ("carl.mp4", "dana.mov") for a in ("bye.mp3", "hello.wav")}
    with pytest.raises(EchoMimicError, match="no LoadVideo node.*--videos is for the dubbing workflow"):
        qc.queue_folder(WORKFLOW, None, media[1], dry_run=True, videos=people)
    with pytest.raises(EchoMimicError, match="either a portraits folder or a videos folder"):
        qc.queue_folder(dub, media[0], media[1], dry_run=True, videos=people)
    assert qc.main([str(dub), "--videos", str(people), "--audios", str(media[1]), "--dry-run"]) == 0


def test_the_to_file_workflow_gets_the_per_job_prefix_on_its_sampler():
    """The to-file samplers save the video themselves (no Save Video): each job's prefix goes there, so the files are
    named per job rather than all numbered under the workflow's prefix."""
    template = json.loads((ROOT / "workflows" / "api" / "v1_audio_to_file.json").read_text())
    prompt = qc.build_prompt(template, "anna.png", "hello.wav", "echomimic/anna__hello", seed=3)
    (node,) = [n for n in prompt.values() if n["class_type"] == "EchoMimicSamplerToFile"]
    assert node["inputs"]["filename_prefix"] == "echomimic/anna__hello" and node["inputs"]["seed"] == 3
