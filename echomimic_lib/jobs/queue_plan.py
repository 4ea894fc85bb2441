"""The jobs of ``echomimic queue`` (:mod:`.queue_client`; standard library only): every portrait (or video) x every
audio of two folders, each with its own output prefix, and the API-format prompt each job sends (the uploaded file
names, the prefix and the seed filled into a copy of the workflow)."""
from __future__ import annotations

import collections
import copy
import itertools
from dataclasses import dataclass
from pathlib import Path

from ..io.file_names import safe_file_name
from ..io.json_file import read_json
from .queue_replies import QueueError

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"}
VIDEO_EXT = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}
DEFAULT_SERVER = "http://127.0.0.1:8188"


@dataclass
class Job:
    portrait: Path  # the job's picture, or its video (the dubbing workflow's Load Video)
    audio: Path
    prefix: str
    is_video: bool = False


def _files(folder, exts: set, what: str) -> list[Path]:
    if not str(folder).strip():  # `--audios $DIR` with DIR unset: not the current folder
        raise QueueError(f"--{what}s is empty; give the folder of {what} files.")
    folder = Path(folder)
    if folder.is_file():  # (one file given where a folder of them goes)
        raise QueueError(f"--{what}s {folder} is a file, not a folder: every file of the folder is queued; give the "
                         f"folder that holds it (--{what}s {folder.parent}) or put the files to queue in a folder of "
                         "their own.")
    if not folder.is_dir():
        raise QueueError(f"{what} folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise QueueError(f"no {what} files ({', '.join(sorted(exts))}) in {folder}")
    return files


def plan_jobs(portraits, audios, prefix: str = "echomimic", videos=None) -> list[Job]:
    """Every portrait (or every video) x every audio, in name order, each with its own output prefix."""
    _check_prefix(prefix)
    sources = _files(videos, VIDEO_EXT, "video") if videos is not None else _files(portraits, IMAGE_EXT, "portrait")
    sounds = _files(audios, AUDIO_EXT, "audio")
    label = {**_labels(sources), **_labels(sounds)}
    pairs = itertools.product(sources, sounds)
    return [Job(p, a, f"{prefix}/{label[p]}__{label[a]}", videos is not None) for p, a in pairs]


def _check_prefix(prefix: str) -> None:
    """A :class:`QueueError` when ``--prefix`` is not a folder inside ComfyUI's output folder (empty, absolute, a
    drive, a ``..`` or ``.`` part): ComfyUI refuses such a save only once each video is rendered."""
    parts = str(prefix).replace("\\", "/").split("/")
    if not str(prefix).strip() or parts[0] == "" or "." in parts or ".." in parts or ":" in parts[0]:
        raise QueueError(f"--prefix {prefix!r} is not a folder inside ComfyUI's output folder (ComfyUI would refuse "
                         "each video only once it is rendered); give a relative name such as echomimic or "
                         "clients/day1.")


LABEL_BYTES = 110  # each file's part of a prefix: two of them, '__' and ComfyUI's '_00001_.mp4' fit in 255 bytes


def _labels(files) -> dict:
    """Each file's part of the output prefix: its stem as a file name every server's file system takes (the batch's
    rule, :func:`~echomimic_lib.io.file_names.safe_file_name`: letters of any script kept, ``take:1`` -> ``take_1``, at
    most :data:`LABEL_BYTES` bytes), or, where two files' parts are one (``anna.png`` and ``anna.jpg``; ``Anna.png``
    too, for case-blind file systems), the name with its extension (``anna_png``), then a number, so no two jobs share
    a prefix and each video says which file it came from."""
    def label(text: str) -> str:
        return safe_file_name(text, fallback="file", max_chars=LABEL_BYTES, max_bytes=LABEL_BYTES)

    out = {f: label(f.stem) for f in files}
    twice = collections.Counter(v.casefold() for v in out.values())
    out = {f: v if twice[v.casefold()] == 1 else label(f"{f.stem}_{f.suffix.lstrip('.')}") for f, v in out.items()}
    seen: collections.Counter = collections.Counter()
    for f, v in out.items():  # 'take:1.png' and 'take_1.png' are both 'take_1_png': numbered
        seen[v.casefold()] += 1
        if seen[v.casefold()] > 1:
            out[f] = f"{v}-{seen[v.casefold()]}"
    return out


def find_node(prompt: dict, class_type: str, explicit: str | None = None) -> str | None:
    """Id of the single node of ``class_type`` (or ``explicit``); None if there is none."""
    if explicit is not None:
        if explicit not in prompt:
            raise QueueError(f"node '{explicit}' is not in the workflow (ids: {', '.join(prompt)}).")
        return explicit
    ids = [k for k, v in prompt.items() if v.get("class_type") == class_type]
    if len(ids) > 1:
        raise QueueError(f"the workflow has several {class_type} nodes ({', '.join(ids)}); say which one to fill.")
    return ids[0] if ids else None


SAVING_NODES = ("SaveVideo", "EchoMimicSamplerToFile", "EchoMimicV3SamplerToFile", "EchoMimicSaveDub")  # nodes that take a filename_prefix


def build_prompt(template: dict, image: str | None, audio: str, prefix: str, seed: int | None = None,
                 driving: str | None = None, video_required: bool = False) -> dict:
    """A copy of the API-format ``template`` with the uploaded file names, the output prefix and the seed.
    ``driving`` goes into Load Video (a driving clip, or with ``video_required`` the job's own video)."""
    prompt = copy.deepcopy(template)
    for class_type, key, value in (("LoadImage", "image", image), ("LoadAudio", "audio", audio), ("LoadVideo", "file", driving)):
        node = find_node(prompt, class_type)
        if node is None and value is not None and (class_type != "LoadVideo" or video_required):
            hint = " (--videos is for the dubbing workflow, workflows/api/v1_dub_video.json)" if video_required else ""
            raise QueueError(f"the workflow has no {class_type} node to put '{value}' into; is it an API-format EchoMimic "
                             f"workflow?{hint}")
        if node is not None and value is not None:
            prompt[node]["inputs"][key] = value
    for node in prompt.values():
        if node.get("class_type") in SAVING_NODES:
            node["inputs"]["filename_prefix"] = prefix
        if seed is not None and "seed" in node.get("inputs", {}):
            node["inputs"]["seed"] = int(seed)
    return prompt


MAX_WORKFLOW_BYTES = 64 << 20  # an API workflow is kilobytes; ComfyUI's own request limit is about 100 MB


def load_workflow(workflow) -> dict:
    """The API-format workflow ``workflow`` (a JSON file), or a :class:`QueueError` naming the file and the fix
    (missing, unreadable, not JSON, nested too deeply for Python's parser, a UI-format workflow, nodes not objects)."""
    template = read_json(workflow, "not a readable JSON workflow", "use workflows/api/*.json (or ComfyUI's 'Export (API)')",
                         QueueError, max_bytes=MAX_WORKFLOW_BYTES, pipes=True, missing=f"workflow not found: {workflow}; give an API-format workflow such as "
                         "workflows/api/v1_audio.json.")
    if (not isinstance(template, dict) or "nodes" in template
            or not all(isinstance(v, dict) and "class_type" in v for v in template.values())):
        raise QueueError(f"{workflow}: not an API-format workflow; use workflows/api/*.json (or ComfyUI's 'Export (API)').")
    bad = [k for k, v in template.items() if not isinstance(v.get("inputs"), dict)]  # (filled in below: never a KeyError)
    if bad:
        raise QueueError(f"{workflow}: node {bad[0]} ({template[bad[0]]['class_type']}) has no 'inputs' object, which every "
                         "node of an API-format workflow has; export the workflow again with ComfyUI's 'Export (API)' (or "
                         "use workflows/api/*.json).")
    for node_id, node in template.items():  # (ComfyUI refuses it only after every upload, with a KeyError's text)
        for key, value in node["inputs"].items():
            if _is_link(value) and value[0] not in template:
                raise QueueError(f"{workflow}: node {node_id} ({node['class_type']}) input '{key}' is linked to node "
                                 f"{value[0]}, which is not in the workflow (a node deleted or replaced since); connect "
                                 "that input again in ComfyUI and save the workflow with 'Export (API)'.")
    return template


def check_seed_input(template: dict, seed, workflow) -> None:
    """A :class:`QueueError` when ``--seed`` is given for a workflow with no seed input (it would change nothing)."""
    if seed is not None and not any("seed" in node["inputs"] for node in template.values()):
        raise QueueError(f"{workflow}: the workflow has no seed input, so --seed {seed} would change nothing; drop "
                         "--seed (the workflow's own seeds are used) or give a workflow with an EchoMimic Sampler.")


def _is_link(value) -> bool:
    """Whether an API-format input is a link to another node's output (``["4", 0]``)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)
            and not isinstance(value[1], bool))
