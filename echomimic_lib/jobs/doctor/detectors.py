"""``echomimic doctor``, the detector models: MediaPipe's face landmarker bundle (``.task``) and BlazeFace face detector
(``.tflite``), and DWPose's two ONNX files. Each file is ``ready``, ``missing`` (with the exact command that fetches
it) or ``broken`` (empty, a Git LFS pointer, truncated, or not the kind of file it should be), with the modes it is
needed for.

Found as the pack finds them (:func:`echomimic_lib.landmarks.mp_models.resolve_model`,
:func:`echomimic_lib.pose.dwpose.resolve_dwpose_models`), and checked cheaply and read-only: a ``.task`` must open as a
zip holding ``face_landmarks_detector.tflite`` with every member's CRC right (3.7 MB read), a ``.tflite`` must carry the
``TFL3`` identifier at byte 4, an ``.onnx`` file's top-level protobuf fields must add up to its size (a few reads; no
ONNX package and no runtime session is used).
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from ...errors import EchoMimicError, MissingWeightsError
from .shell import download, fix as with_remarks, remove, then

HF = "https://huggingface.co"
LFS = b"version https://git-lfs"
# what each file is needed for (shown with it)
LANDMARKER_FOR = ("v1-audio (face crop; --no-face-crop skips it)", "v1-landmarks / v1-audio+landmarks from a driving video",
                  "echomimic dub", "echomimic landmarks", "echomimic evaluate (lip sync, jitter, shape drift)",
                  "ComfyUI: Reference Preparation (V1 face crop), landmark, face-track and evaluate nodes")
DETECTOR_FOR = ("library only: prepare_v1_reference(box_provider='detector'); no command or node uses it",)
DWPOSE_FOR = ("v2-halfbody with --pose VIDEO, --halfbody-crop or --align-poses", "echomimic poses --video",
              "ComfyUI: the pose-video loader, Reference Preparation (V2 half-body crop), the gesture nodes")
REFUSED = "refused by the pack's own file check (mp_models)"
TASK_MAX_UNPACKED = 64 << 20  # a .task bundle unpacks to 3.7 MB
ONNX_MIN_BYTES = 1 << 20  # the released DWPose files are 130-220 MB; anything under 1 MiB is not one


def _head(path: Path, n: int = 64) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _common_problem(path: Path) -> str | None:
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    if _head(path).startswith(LFS):
        return "a Git LFS pointer, not the model (the repository was cloned without git-lfs)"
    return None


def task_problem(path: Path) -> str | None:
    """What is wrong with a face landmarker ``.task`` bundle (a zip); None when it is whole."""
    try:
        if why := _common_problem(path):
            return why
        if path.stat().st_size < 1024:
            return f"too small for the model ({path.stat().st_size} bytes; a broken-off download?)"
        with zipfile.ZipFile(path) as zf:
            if "face_landmarks_detector.tflite" not in zf.namelist():
                return "a zip without face_landmarks_detector.tflite: not a MediaPipe face landmarker bundle"
            if (unpacked := sum(i.file_size for i in zf.infolist())) > TASK_MAX_UNPACKED:  # before testzip unpacks it all
                return f"its members unpack to {unpacked} bytes (the real bundle: 3.7 MB): not the model (a zip bomb?)"
            bad = zf.testzip()
        if bad is not None:
            return f"damaged: member {bad} fails its CRC check (a broken-off or corrupted download?)"
    except zlib.error as exc:
        return f"damaged: a member does not decompress ({exc}; a corrupted download?)"
    except zipfile.BadZipFile:
        return f"not a zip archive ({path.stat().st_size} bytes): a .task bundle is one; truncated or not the model"
    except (OSError, RuntimeError, EOFError) as exc:
        return f"unreadable ({exc})"
    return None


def tflite_problem(path: Path) -> str | None:
    """What is wrong with a ``.tflite`` model; None when it carries the TFLite identifier."""
    try:
        if why := _common_problem(path):
            return why
        size = path.stat().st_size
        if _head(path, 8)[4:8] != b"TFL3":
            return "no TFLite identifier ('TFL3' at byte 4): not a .tflite model"
        if size < 1024:
            return f"too small for the model ({size} bytes; a broken-off download?)"
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def _varint(fh) -> int:
    value = shift = 0
    while True:
        b = fh.read(1)
        if not b:
            raise EOFError
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def onnx_problem(path: Path) -> str | None:
    """What is wrong with an ``.onnx`` model, from its top-level protobuf fields (ModelProto: ir_version first, the
    graph as field 7): a length that runs past the end is a truncated file. None when it looks whole."""
    try:
        if why := _common_problem(path):
            return why
        size = path.stat().st_size
        if size < ONNX_MIN_BYTES:
            return f"too small for the model ({size} bytes; the released DWPose files are over 100 MB)"
        fields = []
        with open(path, "rb") as fh:
            while fh.tell() < size and len(fields) < 1000:
                tag = _varint(fh)
                field, wire = tag >> 3, tag & 7
                fields.append(field)
                if wire == 0:
                    _varint(fh)
                elif wire in (1, 2, 5):
                    n = {1: 8, 5: 4}.get(wire) or _varint(fh)
                    if fh.tell() + n > size:
                        return f"truncated: {size} bytes, a field runs to byte {fh.tell() + n} (a broken-off download?)"
                    fh.seek(n, 1)
                else:
                    raise ValueError(f"wire type {wire}")
        if not fields or fields[0] != 1 or 7 not in fields or len(fields) >= 1000:
            return "not an ONNX model (its protobuf has no ir_version / graph at the top level)"
    except (EOFError, ValueError):
        return "not an ONNX model, or truncated (its protobuf does not parse to the end)"
    except OSError as exc:
        return f"unreadable ({exc})"
    return None


def _file_row(name: str, required: bool, needed_for) -> dict:
    return {"name": name, "required": required, "status": "ready", "path": None, "bytes": 0, "problem": None,
            "fix": None, "needed_for": list(needed_for)}


CLI_REMARK = "or run animate / dub / landmarks once without --offline"  # the face landmarker's other way in
COMFY_REMARK = ("or switch on auto_download in a landmark, face-track or evaluate node: it fetches the file into the "
                "first echomimic root")


def mediapipe_file(root: Path, kind: str, remark: str = CLI_REMARK) -> dict:
    """One MediaPipe model file, as :func:`resolve_model` finds it (``kind``: face_landmarker or face_detector;
    ``remark``: the other way to get the landmarker, the command line's or ComfyUI's)."""
    from ...landmarks.mp_models import MODELS, SUBFOLDERS, resolve_model

    spec = MODELS[kind]
    landmarker = kind == "face_landmarker"
    row = _file_row(spec["save_as"], landmarker, LANDMARKER_FOR if landmarker else DETECTOR_FOR)
    dest = root / SUBFOLDERS[0] / spec["save_as"]
    fix = with_remarks(download(dest, spec["url"]), *([remark] if landmarker else []))
    check = task_problem if landmarker else tflite_problem
    try:
        p = resolve_model(kind, None, [root], download=False)
        row.update(path=str(p), bytes=p.stat().st_size)
        bad = [(p, why)] if (why := check(p)) else []
    except MissingWeightsError as err:  # none passes the pack's own check: broken ones are there, or nothing is
        bad = [(Path(c), check(Path(c))) for c in err.missing if Path(c).is_file()]
        if not bad:
            row.update(status="missing", path=str(dest), fix=fix)
            return row
    except (EchoMimicError, OSError) as exc:
        row.update(status="broken", problem=str(exc), fix=fix)
        return row
    if bad:
        row.update(status="broken", path=str(bad[0][0]), bytes=bad[0][0].stat().st_size,
                   problem="; ".join(f"{p}: {why or REFUSED}" for p, why in bad),
                   fix=then(remove(p for p, _ in bad), fix))
    return row


def dwpose_files(root: Path) -> list[dict]:
    """The two DWPose ONNX files, as :func:`resolve_dwpose_models` finds them (the first hit of each name)."""
    from ...pose.dwpose import DET_FILENAME, HF_REPO, POSE_FILENAME, resolve_dwpose_models

    try:
        found = dict(zip((DET_FILENAME, POSE_FILENAME), resolve_dwpose_models(root, download=False)))
    except MissingWeightsError as err:
        found = {}
        for name in (DET_FILENAME, POSE_FILENAME):  # the one that is there, found the same way
            if name not in err.missing:
                found[name] = next(root / d / name for d in ("", "dwpose", "DWPose", "yzd-v/DWPose") if (root / d / name).is_file())
    rows = []
    for name in (DET_FILENAME, POSE_FILENAME):
        row = _file_row(name, False, DWPOSE_FOR)
        fix = download(root / "dwpose" / name, f"{HF}/{HF_REPO}/resolve/main/{name}")
        p = found.get(name)
        if p is None:
            row.update(status="missing", path=str(root / "dwpose" / name), fix=fix)
        else:
            row.update(path=str(p), bytes=p.stat().st_size)
            if why := onnx_problem(p):
                row.update(status="broken", problem=why, fix=then(remove([p]), fix))
        rows.append(row)
    return rows


def _worst(files: list[dict]) -> str:
    states = {f["status"] for f in files}
    return "broken" if "broken" in states else "missing" if "missing" in states else "ready"


def _rel(root: Path, p: str) -> str:
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return p


def mediapipe_row(root: Path, remark: str = CLI_REMARK) -> dict:
    """The shared-parts row: its status is the face landmarker's (the detector is optional, shown in ``files``)."""
    files = [mediapipe_file(root, "face_landmarker", remark), mediapipe_file(root, "face_detector")]
    lm = files[0]
    return {"part": "mediapipe", "what": "MediaPipe face landmarker, V1 face crop and landmarks from a video",
            "status": lm["status"], "path": lm["path"] if lm["status"] != "missing" else None, "bytes": lm["bytes"],
            "missing": [_rel(root, lm["path"])] if lm["status"] == "missing" else [],
            "broken": [{"path": lm["path"], "problem": lm["problem"]}] if lm["status"] == "broken" else [],
            "fix": lm["fix"], "needed_for": lm["needed_for"], "files": files}


def dwpose_row(root: Path) -> dict:
    files = dwpose_files(root)
    status = _worst(files)
    ready = [f for f in files if f["status"] == "ready"]
    fixes = [f["fix"] for f in files if f["fix"]]
    return {"part": "dwpose", "what": "DWPose models, V2 poses from a video, --halfbody-crop, --align-poses (optional)",
            "status": status, "path": str(Path(ready[0]["path"]).parent) if status == "ready" else None,
            "bytes": sum(f["bytes"] for f in files),
            "missing": [_rel(root, f["path"]) for f in files if f["status"] == "missing"],
            "broken": [{"path": f["path"], "problem": f["problem"]} for f in files if f["status"] == "broken"],
            "fix": then(*fixes) or None, "needed_for": list(DWPOSE_FOR), "files": files}
