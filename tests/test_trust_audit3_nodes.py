"""Third trust audit, ComfyUI names from a workflow (through the stand-ins of nodes/comfy_bridge.py): a LoRA, pose
folder or weights-folder name, or a to-file node's filename_prefix, with a NUL byte, a symlink loop, an over-long part,
a non-text value or a file where a folder goes, is a clear EchoMimicError (a message naming the fix when the prompt is
queued, where a check there exists), never a RuntimeError / ValueError / OSError from deep inside, and never a path
outside its folder."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests._pack import sub

C = sub("nodes.comfy_bridge")
paths = sub("nodes.paths")
EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(C, "INPUT_DIR", tmp_path / "input")
    monkeypatch.setattr(C, "OUTPUT_DIR", tmp_path / "output")
    for d in ("models/echomimic/loras", "models/echomimic/poses", "input/echomimic_poses", "output"):
        (tmp_path / d).mkdir(parents=True)
    return tmp_path


# ------------------------------------------------------------------------------------------ filename_prefix
def _to_file_nodes():
    tf = sub("nodes.to_file")
    return tf.EchoMimicSamplerToFile, tf.EchoMimicV3SamplerToFile


@pytest.mark.parametrize("node", _to_file_nodes())
def test_a_prefix_with_a_nul_byte_is_refused_when_queued(comfy, node):
    msg = node.VALIDATE_INPUTS(filename_prefix="echomimic/vi\x00deo")
    assert isinstance(msg, str) and "NUL byte" in msg and "echomimic/video" in msg, msg
    with pytest.raises(EchoMimicError, match="NUL byte"):
        C.save_path("echomimic/vi\x00deo", "mp4")
    assert list((comfy / "output").iterdir()) == []


@pytest.mark.parametrize("node", _to_file_nodes())
def test_a_prefix_through_a_file_is_refused_when_queued_and_the_file_is_kept(comfy, node):
    (comfy / "output" / "echomimic").write_text("my notes")
    msg = node.VALIDATE_INPUTS(filename_prefix="echomimic/video")
    assert isinstance(msg, str) and "is a file, not a folder" in msg and "another sub-folder" in msg, msg
    assert node.VALIDATE_INPUTS(filename_prefix="other/video") is True
    with pytest.raises(EchoMimicError, match="is a file, not a folder"):
        C.save_path("echomimic/sub/video", "mp4")
    assert (comfy / "output" / "echomimic").read_text() == "my notes"


def test_an_over_long_prefix_is_refused_when_queued(comfy):
    node = _to_file_nodes()[0]
    for prefix in ("x" * 230, "echomimic/" + "y" * 260 + "/video"):
        msg = node.VALIDATE_INPUTS(filename_prefix=prefix)
        assert isinstance(msg, str) and "bytes long" in msg and f"at most {C.MAX_PREFIX_PART}" in msg, msg
    assert node.VALIDATE_INPUTS(filename_prefix="x" * C.MAX_PREFIX_PART) is True


def test_in_comfyui_an_os_error_of_its_helper_is_a_clear_error(comfy, monkeypatch):
    def helper(prefix, root, w, h):
        raise NotADirectoryError(20, "Not a directory", str(comfy / "output" / "late"))

    monkeypatch.setattr(C, "folder_paths", SimpleNamespace(get_output_directory=lambda: str(comfy / "output"),
                                                           get_save_image_path=helper))
    with pytest.raises(EchoMimicError) as info:
        C.save_path("late/video", "mp4")
    assert str(info.value).startswith(f"filename_prefix 'late/video': cannot write {comfy / 'output' / 'late'}: a part of "
                                      "the path is a file, not a folder")


# ------------------------------------------------------------------------------------------ names in folders
def test_a_symlink_loop_is_a_clear_error_for_every_kind_of_name(comfy):
    loras, poses = comfy / "models" / "echomimic" / "loras", comfy / "models" / "echomimic" / "poses"
    for folder in (loras, poses, comfy / "models" / "echomimic"):
        (folder / "a").symlink_to("b")
        (folder / "b").symlink_to("a")
    for call in (lambda: paths.resolve_lora("a"), lambda: paths.resolve_pose_folder("a"),
                 lambda: paths.find_named(paths.echomimic_roots(), "a/x", "weights folder", want_dir=True)):
        with pytest.raises(EchoMimicError, match="symlink that points to itself"):
            call()
    assert "a" not in paths.lora_files() and "a" not in paths.pose_folders()  # the lists never offered them


def test_a_gestures_library_name_that_loops_is_refused_before_any_speech_work(comfy):
    poses = comfy / "models" / "echomimic" / "poses"
    (poses / "loop").symlink_to("loop")
    gen = sub("nodes.gestures").generate
    with pytest.raises(EchoMimicError, match="symlink that points to itself"):
        gen("loop", 0, 1.0, 24.0, 0.5, "none", False, audio={"waveform": None, "sample_rate": 16000})


@pytest.mark.parametrize("name,words", [
    ("my\x00lora.safetensors", ["NUL byte"]),
    ("x" * 300 + ".safetensors", ["longer than 255 bytes"]),
    ("sub/" + "y" * 256, ["longer than 255 bytes"]),
    (None, ["is not a name", "NoneType"]),
    (7, ["is not a name", "int"]),
    (["a.safetensors"], ["is not a name", "list"]),
])
def test_odd_names_from_an_api_prompt_are_clear_errors(comfy, name, words):
    for call in (lambda: paths.resolve_lora(name), lambda: paths.resolve_pose_folder(name),
                 lambda: paths.resolve_comfy_lora(name)):
        with pytest.raises(EchoMimicError) as info:
            call()
        assert all(w in str(info.value) for w in words), str(info.value)


def test_names_that_escape_stay_refused(comfy, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "x.safetensors").write_bytes(b"")
    (comfy / "models" / "echomimic" / "loras" / "out").symlink_to(outside)
    for name in ("../../../secret/x.safetensors", str(outside / "x.safetensors"), "out/x.safetensors", "a/../../x"):
        with pytest.raises(EchoMimicError, match="outside|not a name inside"):
            paths.resolve_lora(name)
