"""What README.md and docs/*.md tell a user to type works: every ``echomimic`` / ``echomimic-train`` line (code blocks
and inline code, ``python -m echomimic_lib...`` / ``accelerate launch -m trainer`` forms too) parses with the real
argparse parsers (sub-commands, flags, choices, numbers; parsing only, nothing runs), every ``bench/*.py --flag``
exists in that script's argparse (read from its source, nothing imported), and what the docs name exists: repository
paths, modules and their functions, ``ECHOMIMIC_*`` environment variables (read by the code), training-config keys,
YAML configs (read by the trainer's strict reader), batch columns, presets, workflows, extras, pytest markers.

Placeholders are accepted where a value goes: ``<...>``, upper-case words (DIR, FILE, N), ``...``; ``[--opt X]`` is
checked as ``--opt X``, and ``a|b|c`` (no spaces) is checked once per alternative. Missing required arguments are
not errors here (prose often names just ``echomimic dub``); abbreviated flags are (argparse would accept
``--ref`` for ``--reference``, the docs should not rely on it). The reading itself: tests/_docs_truth.py."""
from __future__ import annotations

import ast
import dataclasses
import functools
import re
import types
import typing
from pathlib import Path

import pytest

from tests._docs_truth import ROOT, command_failures, docs_texts, paragraphs, prose_lines, snippets


def test_every_documented_command_line_parses():
    failures = [f for name, text in docs_texts() for f in command_failures(name, text)]
    assert not failures, "documented commands that the parsers refuse:\n" + "\n".join(failures)


def test_the_check_finds_made_up_flags_choices_numbers_and_commands():
    sample = "\n".join([
        "```bash",
        "echomimic animate --reference p.png --audio a.wav -o out.mp4 --no-such-flag   # 2: made-up flag",
        "echomimic animate --dtype fp64 --reference p.png                               # 3: not a choice",
        "echomimic animate --fps fast                                                   # 4: not a number",
        "echomimic render --reference p.png                                             # 5: no such command",
        "echomimic-train export runs/x OUT/ --format onnx                               # 6: not a choice",
        "cd x && .venv/bin/python bench/bench_train.py --size sd15 \\",
        "    --made-up 3                                                                # 7-8: bench flag",
        "echomimic animate --ref p.png                                                  # 9: abbreviation",
        "echomimic queue workflows/api/v1_audio.json --audios A/ --portraits P/ --bogus  # 10: queue flag",
        "```",
        "Prose (12): `echomimic-train plan --gpus many` and `echomimic download --weights v1_audio|v9`.",
        "```bash",
        "echomimic animate --version v2 --pose auto [--gesture-library DIR] --reference <png> --audio a.wav -o o.mp4",
        "echomimic-train fit --config run.yaml --resume   # fine",
        "accelerate launch --multi_gpu -m trainer fit --config run.yaml | tee log  # fine",
        "python -m echomimic_lib.cli doctor --json && echomimic poses --video   # fine",
        "for f in *.png; do CUDA_VISIBLE_DEVICES=0 echomimic animate --reference $f --bogus2; done  # 18: in a loop",
        "```",
    ])
    failures = command_failures("sample.md", sample)
    lines = sorted(int(f.split(":")[1]) for f in failures)
    assert lines == [2, 3, 4, 5, 6, 7, 9, 10, 12, 12, 18], "\n".join(failures)
    joined = "\n".join(failures)
    for words in ("--no-such-flag", "'fp64'", "'fast'", "'render'", "'onnx'", "--made-up", "--ref", "--bogus", "'many'",
                  "'v9'", "--bogus2"):
        assert words in joined, words


def test_every_inline_code_span_is_closed():
    """An unclosed `span (`--compile' was one) shifts every later span of the paragraph: the checks above would read
    prose as commands and commands as prose."""
    odd = [f"{name}:{first}: {paragraph.splitlines()[0][:100]}" for name, text in docs_texts()
           for first, paragraph in paragraphs(prose_lines(text)) if paragraph.count("`") % 2]
    assert not odd, "paragraphs with an odd number of backticks (a code span left open):\n" + "\n".join(odd)


PATH_RE = re.compile(r"(?<![\w./~$-])((?:workflows|bench|tests|docs|echomimic_lib|nodes|trainer)/[\w./*-]*[\w*/])")


def missing_paths(name: str, text: str) -> list[str]:
    missing = []
    for number, line in enumerate(text.splitlines(), 1):
        for path in PATH_RE.findall(line):
            path = path.rstrip(".")
            if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                missing.append(f"{name}:{number}: {path}")
    return missing


def test_every_repository_path_named_in_the_docs_exists():
    missing = [m for name, text in docs_texts() for m in missing_paths(name, text)]
    assert not missing, "paths the docs name that the repository lacks:\n" + "\n".join(missing)
    sample = "`bench/bench_vram.py`, bench/bench_nope.py and workflows/api/*.jsn\n(see docs/v3.md, tests/test_lint.py)."
    assert missing_paths("s", sample) == ["s:1: bench/bench_nope.py", "s:1: workflows/api/*.jsn"]


DOTTED_RE = re.compile(r"(?<![\w/.-])((?:echomimic_lib|trainer|nodes)(?:\.[A-Za-z_]\w*)+)")


def _top_level_names(path: Path) -> set:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def dotted_name_problem(dotted: str) -> str | None:
    """Why ``echomimic_lib.a.b.name`` does not name a module, or a function / class / constant of one (read, not
    imported), or None."""
    path, parts = ROOT, dotted.split(".")
    for i, part in enumerate(parts):
        if (path / part / "__init__.py").is_file():
            path = path / part
        elif (path / f"{part}.py").is_file():
            rest, module = parts[i + 1:], path / f"{part}.py"
            break
        else:
            rest, module = parts[i:], path / "__init__.py"
            break
    else:
        return None
    if rest and rest[0] not in _top_level_names(module):
        return f"{module.relative_to(ROOT).as_posix()} defines no {rest[0]}"
    return None


def test_every_module_and_function_named_in_the_docs_exists():
    wrong = [f"{name}:{number}: {dotted}: {why}" for name, text in docs_texts()
             for number, line in enumerate(text.splitlines(), 1) for dotted in DOTTED_RE.findall(line)
             if (why := dotted_name_problem(dotted))]
    assert not wrong, "names the docs give that the code lacks:\n" + "\n".join(wrong)
    assert dotted_name_problem("echomimic_lib.lora.no_such_function") and dotted_name_problem("trainer.nope.thing")


def _code_text() -> str:
    files = [p for d in ("echomimic_lib", "nodes", "trainer", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    files += list(ROOT.glob("*.py")) + list(ROOT.glob("bench/*.sh"))
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files if p.name != "test_docs_truth.py")


def unread_environment_variables(texts, code: str) -> list[str]:
    socket_types = set()  # ComfyUI socket types (ECHOMIMIC_MODEL, ...) share the prefix; the node table names them
    named = set()
    for _, text in texts:
        for line in text.splitlines():
            found = set(re.findall(r"\bECHOMIMIC_[A-Z0-9_]+\b", line))
            (socket_types if line.startswith("| **EchoMimic") else named).update(found)
    return sorted(v for v in named - socket_types
                  if not re.search(rf"(environ(\.get|\.setdefault)?\s*[\[(]\s*|getenv\(\s*)[\"']{v}[\"']|\$\{{{v}\b", code))


def test_every_documented_environment_variable_is_read():
    code = _code_text()
    unread = unread_environment_variables(docs_texts(), code)
    assert not unread, f"environment variables the docs name that no code reads: {unread}"
    sample = [("s", "`$ECHOMIMIC_MODELS`, ECHOMIMIC_NOPE=1 and\n| **EchoMimic Loader** `X` | `model` ECHOMIMIC_MODEL |")]
    assert unread_environment_variables(sample, code) == ["ECHOMIMIC_NOPE"]


def _config_classes():
    from trainer.config import TrainConfig
    from trainer.v3.config import V3TrainConfig

    return TrainConfig, V3TrainConfig


@functools.lru_cache(maxsize=None)
def _phase_names() -> frozenset:
    from trainer.presets import PRESETS, preset_dict

    return frozenset(str(p.get("name")) for n in PRESETS for p in preset_dict(n).get("phases", []))


def _has_key(cls, parts: list[str]) -> bool:
    hints = typing.get_type_hints(cls)
    if parts[0] not in hints:
        return False
    rest, kind = parts[1:], hints[parts[0]]
    if not rest:
        return True
    if typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):  # phases.<name>.field
        if not (rest[0].isdigit() or rest[0].isupper() or rest[0] in _phase_names()):
            return False
        return len(rest) == 1 or _has_key(typing.get_args(kind)[0], rest[1:])
    kinds = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, types.UnionType) else (kind,)
    return any(_has_key(k, rest) for k in kinds if dataclasses.is_dataclass(k)) or dict in kinds \
        or any(typing.get_origin(k) is dict for k in kinds)  # a free mapping (noise_scheduler)


def config_key_problem(key: str) -> str | None:
    """None when ``a.b.c`` is a key of the V1/V2 training config or of the EchoMimicV3 LoRA one."""
    parts = key.split(".")
    return None if any(_has_key(cls, parts) for cls in _config_classes()) else f"{key}: no such training-config key"


FILE_ENDINGS = ("pt", "pth", "bin", "safetensors", "json", "yaml", "npz", "npy", "onnx", "task", "mp4", "png", "txt")


def test_every_training_config_key_the_docs_name_exists():
    """`--set KEY=VALUE` of the documented commands, and every `section.key` in inline code (`data.frames`,
    `phases.3b.steps`, `loss.phd.low_weight: 0`), are keys of the V1/V2 or V3 LoRA config (an error message quoted
    as an example of a wrong key, `optim.lrr: unknown key`, is left out)."""
    sections = sorted({f.name for cls in _config_classes() for f in dataclasses.fields(cls)}, key=len, reverse=True)
    key_re = re.compile(rf"(?<![\w./$-])((?:{'|'.join(sections)})(?:\.[A-Za-z0-9_]+)+)(?![\w.(])")
    wrong = []
    for name, text in docs_texts():
        for number, snippet in snippets(text):
            keys = [] if "unknown key" in snippet else key_re.findall(snippet)
            keys += [m for m in re.findall(r"--set[ =](\S+?)=", snippet) if "." in m]
            for key in dict.fromkeys(keys):
                if key.rsplit(".", 1)[-1] not in FILE_ENDINGS and (why := config_key_problem(key)):
                    wrong.append(f"{name}:{number}: {why}")
    assert not wrong, "config keys the docs name that the trainer does not know:\n" + "\n".join(wrong)
    assert config_key_problem("optim.lrr") and config_key_problem("phases.3b.stepz") and not config_key_problem("phases.3b.steps")
    assert config_key_problem("phases.5.steps") is None and config_key_problem("phases.3e.steps")


def documented_files():
    """(doc, line, kind, text) of every ```yaml block and every here-document (`cat > x.yaml <<'YAML'`) in a code
    block; kind is the here-document's tag (YAML, CSV) or YAML for a yaml block."""
    for name, text in docs_texts():
        lines, in_block, lang, start = text.splitlines(), False, "", 0
        for i, line in enumerate(lines):
            if line.lstrip().startswith("```"):
                if in_block and lang == "yaml":
                    yield name, start + 1, "YAML", "\n".join(lines[start:i])
                in_block, lang, start = not in_block, line.strip()[3:].strip(), i + 1
            elif in_block and lang != "yaml" and (m := re.search(r"<<-?\s*'?(\w+)'?\s*$", line.split("#")[0].rstrip())):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == m.group(1))
                yield name, i + 2, m.group(1).upper(), "\n".join(lines[i + 1:end])


def _load_documented_yaml(text: str, tmp: Path) -> None:
    """A whole run (it names its preset, or is a V3 LoRA run) is read as `fit` / `v3-fit` read it; a section
    (`noise:`, `distributed:`, `curate:`) for its keys and value types only (its files need not exist here)."""
    import yaml

    from trainer.config import TrainConfig
    from trainer.config_file import deep_merge, from_dict, load_config
    from trainer.data.curate_config import CurateConfig
    from trainer.presets import preset_dict
    from trainer.v3.config import load_v3_config

    data = yaml.safe_load(text)
    tmp.write_text(text, encoding="utf-8")
    if "curate" in data:
        from_dict(CurateConfig, data["curate"], "curate")
    elif "path" in (data.get("model") or {}) or "frames" in (data.get("data") or {}):  # an EchoMimicV3 LoRA run
        load_v3_config(tmp)
    elif "preset" in data:
        load_config(tmp)
    else:
        from_dict(TrainConfig, deep_merge(preset_dict("v1_stage1"), data))


def batch_column_problem(column: str) -> str | None:
    from echomimic_lib.jobs.batch import manifest_row

    known = {"kind", "name", "version", "mode", "lora", "lora_strength", *manifest_row.ALIASES}
    for module, cls in (("animate", "AnimateRequest"), ("dub", "DubRequest")):  # read, not imported (the pipeline: ~10 s)
        tree = ast.parse((ROOT / "echomimic_lib" / "jobs" / f"{module}.py").read_text(encoding="utf-8"))
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
        known |= {n.target.id for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    key = manifest_row._key(column)
    return None if key in known - set(manifest_row.NOT_PER_ROW) else f"{column}: not a batch column"


def test_every_documented_config_file_and_manifest_loads(tmp_path):
    """The docs' YAML configs (whole runs and single sections) load with the trainer's strict reader; the batch
    manifests' header columns and `echomimic batch --set KEY=` keys are columns a row may have."""
    wrong = []
    for name, number, kind, text in documented_files():
        if kind == "YAML":
            try:
                _load_documented_yaml(text, tmp_path / "doc.yaml")
            except Exception as exc:  # ConfigError, or YAML the reader refuses
                wrong.append(f"{name}:{number}: {type(exc).__name__}: {exc}")
        elif kind == "CSV":
            wrong += [f"{name}:{number}: {why}" for c in text.splitlines()[0].split(",") if (why := batch_column_problem(c))]
    for name, text in docs_texts():
        for number, snippet in snippets(text):
            if re.search(r"echomimic batch\b", snippet):
                wrong += [f"{name}:{number}: --set {why}" for key in re.findall(r"--set[ =]([\w-]+)=", snippet)
                          if (why := batch_column_problem(key))]
    assert not wrong, "documented config files / manifests the code refuses:\n" + "\n".join(wrong)
    assert batch_column_problem("stepz") and not batch_column_problem("steps") and not batch_column_problem("no-face-crop")
    for bad in ("noise: {beta_shedule: linear}", "preset: v1_stage1\noptim: {lrr: 1.0e-5}", "curate: {max_yaww: 4}",
                "model: {path: M}\ndata: {frames: 49, widht: 512}"):
        with pytest.raises(ValueError, match="unknown key"):
            _load_documented_yaml(bad, tmp_path / "bad.yaml")


def test_presets_workflows_extras_and_markers_the_docs_name_exist():
    """`preset: NAME` / `--preset NAME` / `echomimic-train presets NAME`, a workflow named by file (`v1_audio_acc.json`),
    `pip install ".[extra]"`, `pytest -m marker` and `GPU_STEPS=a,b bash bench/gpu_check.sh` name things the project has."""
    import tomllib

    from trainer.presets import PRESETS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(project["project"]["optional-dependencies"])
    markers = {m.split(":")[0].strip() for m in project["tool"]["pytest"]["ini_options"]["markers"]}
    wrong = []
    for name, text in docs_texts():
        for number, snippet in snippets(text):
            where = f"{name}:{number}"
            train = "echomimic-train" in snippet or "-m trainer" in snippet  # bench scripts have a --preset of their own
            for preset in re.findall(rf"(?:\bpreset:{'|--preset|presets' if train else ''})\s+([a-z]\w*)", snippet):
                if preset not in PRESETS and preset != "NAME":
                    wrong.append(f"{where}: no preset {preset!r} (presets: {', '.join(PRESETS)})")
            for workflow in re.findall(r"(?<![\w/.-])(v\d_\w+\.json)\b", snippet):
                if not (ROOT / "workflows" / workflow).is_file():
                    wrong.append(f"{where}: no workflows/{workflow}")
            for group in re.findall(r"pip install [^|;&]*?\.\[([\w,-]+)\]", snippet):
                wrong += [f"{where}: no extra [{e}] in pyproject.toml" for e in group.split(",") if e not in extras]
            for expression in re.findall(r"pytest\b[^|;&#]*?-m\s+(\"[^\"]+\"|\S+)", snippet):
                words = set(re.findall(r"[A-Za-z_]\w*", expression)) - {"and", "or", "not"}
                wrong += [f"{where}: no pytest marker {w!r}" for w in sorted(words - markers)]
            for var, steps, script in re.findall(r"\b([A-Z_]+)=([\w,]+)\s+bash\s+(bench/\w+\.sh)", snippet):
                body = (ROOT / script).read_text(encoding="utf-8") if (ROOT / script).is_file() else ""
                wrong += [f"{where}: {script} reads no {var}"] if "${" + var not in body else []
                wrong += [f"{where}: {script} has no step {x!r}" for x in steps.split(",") if f"want {x} " not in body]
    assert not wrong, "names the docs give that the project lacks:\n" + "\n".join(wrong)


# flags of the other tools the docs show: ComfyUI, pip, curl, hf, accelerate, ray, tensorboard, pytest, syncnet_python
# and the reference implementation
OTHER_TOOLS_FLAGS = {
    "--cpu", "--directml", "--novram", "--reserve-vram", "--cuda-device", "--preview-method", "--extra-model-paths-config",
    "--force-reinstall", "--no-deps", "--create-dirs", "--local-dir", "--multi_gpu", "--num_processes", "--address",
    "--head", "--num-gpus", "--logdir", "--durations", "--min_face_size", "--min_track", "--num_failed_det", "--crop_face"}


def _all_option_strings() -> set:
    import argparse

    from tests._docs_truth import bench_parser, parser_for

    known, stack = set(), [parser_for(p) for p in ("echomimic", "echomimic-train", "queue")]
    stack += [bench_parser(f"bench/{p.name}") for p in (ROOT / "bench").glob("*.py")]
    while stack:
        parser = stack.pop()
        for action in parser._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
    return known


def test_every_option_named_in_prose_is_an_option_of_something():
    """A `--flag` in inline code with no command before it (`--context-frames`, `--paste-back`) is an option of one
    of the commands or bench scripts (or of a tool the docs show, listed above): a renamed option fails here too."""
    known = _all_option_strings() | OTHER_TOOLS_FLAGS
    unknown = [f"{name}:{number}: {flag}" for name, text in docs_texts() for number, snippet in snippets(text)
               for flag in re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", snippet) if flag not in known]
    assert not unknown, "options the docs name that no command has:\n" + "\n".join(unknown)
    assert "--context-frames" in known and "--no-such-option" not in known
