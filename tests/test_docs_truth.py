"""What README.md and docs/*.md tell a user to type works: every ``echomimic`` / ``echomimic-train`` line (code blocks
and inline code, ``python -m echomimic_lib...`` / ``accelerate launch -m trainer`` forms too) parses with the real
argparse parsers (sub-commands, flags, choices, numbers; parsing only, nothing runs), every ``bench/*.py --flag``
exists in that script's argparse (read from its source, nothing imported), every repository path the docs name
exists, and every ``ECHOMIMIC_*`` environment variable they name is read by the code.

Placeholders are accepted where a value goes: ``<...>``, upper-case words (DIR, FILE, N), ``...``; ``[--opt X]`` is
checked as ``--opt X``, and ``a|b|c`` (no spaces) is checked once per alternative. Missing required arguments are
not errors here (prose often names just ``echomimic dub``); abbreviated flags are (argparse would accept
``--ref`` for ``--reference``, the docs should not rely on it)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests._docs_truth import ROOT, command_failures, docs_texts, paragraphs, prose_lines


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
        "```",
    ])
    failures = command_failures("sample.md", sample)
    lines = sorted(int(f.split(":")[1]) for f in failures)
    assert lines == [2, 3, 4, 5, 6, 7, 9, 10, 12, 12], "\n".join(failures)
    joined = "\n".join(failures)
    for words in ("--no-such-flag", "'fp64'", "'fast'", "'render'", "'onnx'", "--made-up", "--ref", "--bogus", "'many'",
                  "'v9'"):
        assert words in joined, words


def test_every_inline_code_span_is_closed():
    """An unclosed `span (`--compile' was one) shifts every later span of the paragraph: the checks above would read
    prose as commands and commands as prose."""
    odd = [f"{name}:{first}: {paragraph.splitlines()[0][:100]}" for name, text in docs_texts()
           for first, paragraph in paragraphs(prose_lines(text)) if paragraph.count("`") % 2]
    assert not odd, "paragraphs with an odd number of backticks (a code span left open):\n" + "\n".join(odd)


PATH_RE = re.compile(r"(?<![\w./~$-])((?:workflows|bench|tests|docs|echomimic_lib|nodes|trainer)/[\w./*-]*[\w*/])")


def test_every_repository_path_named_in_the_docs_exists():
    missing = []
    for name, text in docs_texts():
        for number, line in enumerate(text.splitlines(), 1):
            for path in PATH_RE.findall(line):
                path = path.rstrip(".")
                if not (list(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                    missing.append(f"{name}:{number}: {path}")
    assert not missing, "paths the docs name that the repository lacks:\n" + "\n".join(missing)


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


def test_every_documented_environment_variable_is_read():
    socket_types = set()  # ComfyUI socket types (ECHOMIMIC_MODEL, ...) share the prefix; the node table names them
    named = set()
    for _, text in docs_texts():
        for line in text.splitlines():
            found = set(re.findall(r"\bECHOMIMIC_[A-Z0-9_]+\b", line))
            (socket_types if line.startswith("| **EchoMimic") else named).update(found)
    code = _code_text()
    unread = sorted(v for v in named - socket_types
                    if not re.search(rf"(environ(\.get|\.setdefault)?\s*[\[(]\s*|getenv\(\s*)[\"']{v}[\"']|\$\{{{v}\b", code))
    assert not unread, f"environment variables the docs name that no code reads: {unread}"
