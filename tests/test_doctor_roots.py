"""``echomimic doctor --comfyui``, the roots the nodes search: the gesture library over every pose root (each
echomimic root's ``poses/`` and ``<input>/echomimic_poses``, the root named), ComfyUI's ``--base-directory`` /
``--input-directory`` / ``--output-directory`` (folders moved as ComfyUI moves them; a folder given but missing is a
finding with its fix), the V3 fix naming the Loader folder the files are in, a V3 folder linked out of its root, and
the Windows portable build's folder. Real folders in tmp_path, stand-in files (presence is all these checks read)."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from echomimic_lib.jobs.doctor import diagnose
from echomimic_lib.jobs.doctor.comfy_paths import OUTPUT_SOURCE
from tests.test_doctor_extra_paths import V3_PARTS, _v3
from tests.test_doctor_more import _json, _part, _run, _safetensors

FLASH = f"{V3_PARTS[1]}/diffusion_pytorch_model.safetensors"


def _comfy(tmp_path: Path, name: str = "ComfyUI") -> Path:
    """A bare ComfyUI folder: main.py and an empty models/echomimic."""
    comfy = tmp_path / name
    (comfy / "models" / "echomimic").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    return comfy


def _pose(folder: Path, frames: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(frames):
        (folder / f"{i}.npy").write_bytes(b"\x93NUMPY")
    return folder


def _pack(custom_nodes: Path) -> Path:
    """A stand-in of this pack's folder in a custom_nodes folder."""
    d = custom_nodes / "ComfyUI-EchoMimic"
    for f in ("nodes/comfy_bridge.py", "echomimic_lib/__init__.py"):
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_text("")
    return d


def _doctor(comfy, weights="v2", **kw) -> dict:
    return diagnose(None, weights, "normal" if weights != "v3-flash" else None, imports=False, comfyui=comfy, **kw)


def test_gesture_library_in_every_root_the_node_reads(tmp_path, capsys):
    comfy, store = _comfy(tmp_path), tmp_path / "store"
    yaml_file = comfy / "extra_model_paths.yaml"
    yaml_file.write_text("mine:\n  base_path: ../store\n  echomimic: em\n")
    _pose(store / "em" / "poses" / "talk")
    poses = _part(_doctor(comfy), "poses")
    assert poses["status"] == "ready" and poses["sequences"] == 1
    assert poses["found_in"] == f"{store / 'em' / 'poses'} ({yaml_file} (mine)): 1"
    _pose(comfy / "input" / "echomimic_poses" / "wave", 3)
    _pose(comfy / "input" / "echomimic_poses" / "nod")
    poses = _part(_doctor(comfy), "poses")
    assert poses["sequences"] == 3 and [r["path"] for r in poses["roots"]] == [
        str(store / "em" / "poses"), str(comfy / "input" / "echomimic_poses")]
    assert poses["roots"][1] == dict(poses["roots"][1], source="ComfyUI's input folder", sequences=2)
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v2", "--variant", "normal")
    assert f"{comfy / 'input' / 'echomimic_poses'}: 2 sequence(s)  (from ComfyUI's input folder)" in out
    assert f"{store / 'em' / 'poses'}: 1 sequence(s)  (from {yaml_file} (mine))" in out

    # ComfyUI started with --input-directory: its input/ is no longer read, the given folder is
    moved = tmp_path / "inputs"
    (comfy / "input").rename(moved)
    poses = _part(_doctor(comfy), "poses")
    assert poses["sequences"] == 1 and len(poses["roots"]) == 1
    poses = _part(_doctor(comfy, input_directory=moved), "poses")
    assert poses["sequences"] == 3 and poses["roots"][1]["path"] == str(moved / "echomimic_poses")

    # none anywhere: missing (optional: not a problem), every root it looked in, the fix into the first root
    for d in (store / "em" / "poses", moved / "echomimic_poses"):
        for seq in d.iterdir():
            for f in seq.iterdir():
                f.unlink()
            seq.rmdir()
    report = _doctor(comfy, input_directory=moved)
    poses = _part(report, "poses")
    assert poses["status"] == "missing" and "poses" not in " ".join(report["problems"])
    assert poses["missing"] == [f"{store / 'em' / 'poses'}/<name>/0.npy, 1.npy, ...",
                                f"{comfy / 'models' / 'echomimic' / 'poses'}/<name>/0.npy, 1.npy, ...",
                                f"{moved / 'echomimic_poses'}/<name>/0.npy, 1.npy, ..."]
    assert poses["fix"].split("\n")[-1].startswith(f"echomimic poses --video DRIVING.mp4 -o {store / 'em' / 'poses' / 'NAME'}")


def _base(tmp_path: Path) -> tuple[Path, Path]:
    """A ComfyUI folder and a --base-directory holding models/, custom_nodes/ (the pack), input/."""
    comfy, base = _comfy(tmp_path), tmp_path / "data"
    (base / "models" / "echomimic").mkdir(parents=True)
    _pack(base / "custom_nodes")
    (base / "input").mkdir()
    return comfy, base


def test_base_directory_moves_the_folders_as_comfyui_does(tmp_path, capsys):
    comfy, base = _base(tmp_path)
    _pose(comfy / "models" / "echomimic" / "poses" / "install")  # the install's own models/: not read with a base
    _pose(base / "models" / "echomimic" / "poses" / "based")
    _pose(base / "input" / "echomimic_poses" / "uploaded")
    yaml_file = comfy / "extra_model_paths.yaml"  # read from ComfyUI's own folder, its base_path from there
    yaml_file.write_text("mine:\n  base_path: ../store\n  echomimic: em\n")
    _v3(base / "models" / "echomimic" / "v3-flash")
    _safetensors(base / "output" / "vae" / "wan_2.1_vae.safetensors")  # main.py adds <output>/vae as a vae folder
    report = _doctor(comfy, "v3-flash", base_directory=base)
    c = report["comfyui"]
    assert c["models_dir"] == str(base / "models")
    em = next(f for f in c["folders"] if f["kind"] == "echomimic")
    assert em["paths"] == [str(tmp_path / "store" / "em"), str(base / "models" / "echomimic")]
    v3 = report["weight_sets"][0]
    assert v3["status"] == "ready" and v3["found_in"].startswith(str(base / "models" / "echomimic" / "v3-flash"))
    assert [r["path"] for r in _part(report, "poses")["roots"]] == [
        str(base / "models" / "echomimic" / "poses"), str(base / "input" / "echomimic_poses")]
    core = {p["part"]: p for p in c["core"]}
    assert core["wan_vae"]["status"] == "ready" and core["wan_vae"]["source"] == OUTPUT_SOURCE
    assert core["text_encoder"]["folder"] == str(base / "models" / "text_encoders")
    assert c["directories"]["pack"] == str(base / "custom_nodes" / "ComfyUI-EchoMimic")
    assert not any("custom_nodes" in p for p in report["problems"])
    rc, out = _run(capsys, "--comfyui", str(comfy), "--base-directory", str(base), "--weights", "v3-flash")
    assert f"--base-directory {base}: models {base / 'models'}, input {base / 'input'}" in out
    assert f"+ {base / 'output' / 'vae'} (1 model file(s))  from {OUTPUT_SOURCE}" in out

    # --output-directory moves output's model folders too; without a base nothing of base/ is read
    (base / "output").rename(tmp_path / "out")
    report = _doctor(comfy, "v3-flash", base_directory=base, output_directory=tmp_path / "out")
    assert {p["part"]: p for p in report["comfyui"]["core"]}["wan_vae"]["found_in"] == str(tmp_path / "out" / "vae")
    report = _doctor(comfy, "v3-flash")
    assert report["comfyui"]["models_dir"] == str(comfy / "models") and report["weight_sets"][0]["status"] == "missing"
    assert report["comfyui"]["directories"]["base"] is None

    # the pack not in the base's custom_nodes: ComfyUI started so does not load it
    (base / "custom_nodes" / "ComfyUI-EchoMimic" / "nodes" / "comfy_bridge.py").unlink()
    report = _doctor(comfy, "v3-flash", base_directory=base)
    found = [p for p in report["problems"] if "custom_nodes" in p]
    assert len(found) == 1 and f"into {base / 'custom_nodes'}" in found[0] and str(comfy / "custom_nodes") in found[0]
    _pack(tmp_path / "elsewhere")  # a yaml custom_nodes: folder holding it counts
    yaml_file.write_text(f"mine:\n  base_path: ../store\n  echomimic: em\n  custom_nodes: {tmp_path / 'elsewhere'}\n")
    report = _doctor(comfy, "v3-flash", base_directory=base)
    assert report["comfyui"]["directories"]["pack"] == str(tmp_path / "elsewhere" / "ComfyUI-EchoMimic")


def test_a_directory_given_but_missing_is_a_finding_with_its_fix(tmp_path, capsys, monkeypatch):
    comfy, base = _base(tmp_path)
    gone = tmp_path / "no such base"
    report = _doctor(comfy, base_directory=gone)
    found = [p for p in report["problems"] if "--base-directory" in p]
    assert not report["ok"] and len(found) == 1 and f"--base-directory {gone}: no such folder" in found[0]
    assert f"mkdir -p {shlex.quote(str(gone / 'models' / 'echomimic'))}" in found[0]
    assert not any("custom_nodes: the EchoMimic pack" in p for p in report["problems"])  # said once, by the base's line
    report = _doctor(comfy, base_directory=base, input_directory=tmp_path / "in")
    found = [p for p in report["problems"] if "--input-directory" in p]
    assert len(found) == 1 and found[0].endswith(f"mkdir -p {tmp_path / 'in'}")
    report = _doctor(comfy, base_directory=base, output_directory=tmp_path / "out")  # ComfyUI makes it at the first save
    assert not any("--output-directory" in p for p in report["problems"])
    assert any(n.startswith(f"--output-directory {tmp_path / 'out'}: no such folder yet") for n in report["comfyui"]["notes"])
    rc, out = _run(capsys, "--comfyui", str(comfy), "--base-directory", str(gone))
    assert rc == 1 and f"PROBLEM --base-directory {gone}: no such folder" in out
    for opt in ("--base-directory", "--input-directory", "--output-directory"):
        rc, out = _run(capsys, opt, str(base))
        assert rc == 2 and f"{opt}: goes with --comfyui" in out
    # relative folders are taken from the current folder, as ComfyUI takes them from the one it starts in
    monkeypatch.chdir(tmp_path)
    assert _doctor(comfy, base_directory="data")["comfyui"]["models_dir"] == str(base / "models")


def _flash_only(folder: Path, base: bool = False) -> None:
    (folder / FLASH).parent.mkdir(parents=True)
    (folder / FLASH).write_bytes(b"x")
    if base:
        (folder / V3_PARTS[0]).mkdir()
        for name in ("config.json", "diffusion_pytorch_model.safetensors"):
            (folder / V3_PARTS[0] / name).write_bytes(b"x")


def test_the_v3_fix_names_the_loader_folder_the_files_are_in(tmp_path, capsys):
    comfy = _comfy(tmp_path)
    em = comfy / "models" / "echomimic"
    v3 = _doctor(comfy, "v3-flash")["weight_sets"][0]  # nothing there: the loader's own 'v3-flash'
    assert v3["status"] == "missing" and "with folder 'v3-flash'" in v3["fix"]
    assert f"run the command below: it fills {em / 'v3-flash'} and" in v3["fix"]
    assert v3["fix"].endswith(f"\nechomimic download --weights v3-flash --models {em}")

    _flash_only(em / "my-v3")  # the user's own folder name: the download line would fill another folder
    report = _doctor(comfy, "v3-flash")
    v3 = report["weight_sets"][0]
    assert v3["missing"][0].startswith("my-v3/") and "with folder 'my-v3'" in v3["fix"]
    assert "not 'my-v3'" in v3["fix"] and "then pick folder 'v3-flash'" in v3["fix"] and "'v3-flash' (fetches" not in v3["fix"]
    assert any("shipped V3 workflows select the V3 Loader folder 'v3-flash'; this install offers my-v3" in n
               for n in report["comfyui"]["notes"])

    _flash_only(em / "another")  # two folders with the same gap: nothing tells them apart, both are named
    v3 = _doctor(comfy, "v3-flash")["weight_sets"][0]
    assert "with folder 'another' or 'my-v3'" in v3["fix"]
    (em / "my-v3" / V3_PARTS[0]).mkdir()  # my-v3 one step further: it is the one the files point to
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (em / "my-v3" / V3_PARTS[0] / name).write_bytes(b"x")
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v3-flash")
    assert rc == 1 and "with folder 'my-v3' (fetches only these three parts into that folder" in out
    assert "'another' or" not in out and "in " + str(em / "my-v3") in out


def test_a_v3_folder_linked_out_of_its_root(tmp_path):
    comfy, store = _comfy(tmp_path), tmp_path / "other drive"
    em = comfy / "models" / "echomimic"
    _v3(store / "real-v3")
    try:
        (em / "v3-flash").symlink_to(store / "real-v3", target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    v3 = _doctor(comfy, "v3-flash")["weight_sets"][0]  # the V3 Loader's safe_child refuses it
    assert v3["status"] == "broken" and f"a link to {store / 'real-v3'}, outside {em}" in v3["broken"][0]["problem"]
    assert f"'echomimic: {store}'" in v3["fix"] and "folder is then 'real-v3'" in v3["fix"]
    (comfy / "extra_model_paths.yaml").write_text(f"drive:\n  echomimic: {store}\n")  # the fix: its folder as a root
    v3 = _doctor(comfy, "v3-flash")["weight_sets"][0]
    assert v3["status"] == "ready" and v3["found_in"].startswith(f"{store / 'real-v3'} (the V3 Loader's folder 'real-v3'")
    # the whole echomimic root linked elsewhere (a models folder on another drive) is fine: nothing leaves the root
    (em / "v3-flash").unlink()
    (comfy / "extra_model_paths.yaml").unlink()
    em.rmdir()
    (store / "real-v3").rename(store / "v3-flash")
    em.symlink_to(store, target_is_directory=True)
    v3 = _doctor(comfy, "v3-flash")["weight_sets"][0]
    assert v3["status"] == "ready" and v3["found_in"].startswith(str(em / "v3-flash"))


def test_windows_portable_folder_and_a_models_folder_read_comfyuis_yaml(tmp_path, capsys):
    portable = tmp_path / "ComfyUI_windows_portable"
    comfy = _comfy(portable)
    (portable / "python_embeded").mkdir()
    yaml_file = comfy / "extra_model_paths.yaml"
    yaml_file.write_text(f"x:\n  echomimic: {tmp_path / 'em'}\n")
    _pose(tmp_path / "em" / "poses" / "talk")
    for given in (portable, comfy / "models"):  # the portable build's folder; ComfyUI's models folder
        rc, report = _json(capsys, "--comfyui", str(given), "--weights", "v2", "--variant", "normal")
        assert report["comfyui"]["models_dir"] == str(comfy / "models")
        assert report["comfyui"]["extra_model_paths"]["files"] == [str(yaml_file)]
        assert _part(report, "poses")["source"] == f"{yaml_file} (x)"
    rc, out = _run(capsys, "--comfyui", str(tmp_path / "em"))
    assert rc == 2 and "ComfyUI_windows_portable/ComfyUI" in out


def test_a_linked_comfyui_folder_reads_the_yaml_from_where_it_really_is(tmp_path):
    """ComfyUI finds itself through realpath(__file__): a yaml's relative base_path starts at the real folder."""
    drive, home = tmp_path / "drive", tmp_path / "home"
    comfy = _comfy(drive)
    home.mkdir()
    try:
        (home / "ComfyUI").symlink_to(comfy, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    (comfy / "extra_model_paths.yaml").write_text("x:\n  base_path: ../store\n  echomimic: em\n")
    _pose(drive / "store" / "em" / "poses" / "talk")
    report = _doctor(home / "ComfyUI")
    assert _part(report, "poses")["path"] == str(drive / "store" / "em" / "poses")
    assert report["comfyui"]["models_dir"] == str(comfy / "models")


def test_a_pose_folder_linked_in_is_said(tmp_path, capsys):
    """'all pose folders' takes a linked-in pose folder; picked by name, nodes/paths.safe_child refuses it."""
    comfy, release = _comfy(tmp_path), _pose(tmp_path / "EchoMimicV2" / "assets" / "halfbody_demo" / "pose" / "01")
    poses = comfy / "models" / "echomimic" / "poses"
    _pose(poses / "own")
    assert _part(_doctor(comfy), "poses").get("problem") is None
    try:
        (poses / "01").symlink_to(release, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    row = _part(_doctor(comfy), "poses")
    assert row["status"] == "ready" and row["sequences"] == 2 and row["roots"][0]["linked_out"] == ["01"]
    assert f"linked from outside its folder: {poses / '01'};" in row["problem"] and "copy the folder in" in row["problem"]
    rc, out = _run(capsys, "--comfyui", str(comfy), "--weights", "v2", "--variant", "normal")
    assert f"note: linked from outside its folder: {poses / '01'}" in out
