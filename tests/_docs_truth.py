"""The reading behind tests/test_docs_truth.py: the commands, paths and names that README.md and docs/*.md give,
and the parsers they are checked with (made lenient about what prose leaves out, strict about the rest)."""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ALT = "\x01"  # a|b alternatives, kept apart from shell pipes
PLACEHOLDER = re.compile(r"^(PLACEHOLDER|[A-Z][A-Z0-9_]*(\.[a-z0-9]+)?|\.\.\.|…)$")
SEPARATORS = {"|", "||", "&&", ";", "&"}


class DocLineError(Exception):
    pass


class _Done(Exception):  # --help / --version in a documented line: parsing stops there, fine
    pass


# ---------------------------------------------------------------- what the docs say a user types


def snippets(text: str):
    """(line number, text) of every code-block line (continuations joined) and every inline code span (which may
    run over a line break)."""
    in_block, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield start, pending + line
            pending = ""
    for first, paragraph in paragraphs(prose_lines(text)):
        for match in re.finditer(r"`([^`]+)`", paragraph):
            yield first + paragraph.count("\n", 0, match.start()), match.group(1).replace("\n", " ")


def prose_lines(text: str) -> list[str]:
    out, in_block = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
            out.append("")
        else:
            out.append("" if in_block else line)
    return out


def paragraphs(lines: list[str]):
    """(first line number, text) of each run of non-blank lines (a list item or table row may continue one)."""
    first, block = 0, []
    for number, line in enumerate([*lines, ""], 1):
        if line.strip():
            first = first or number
            block.append(line)
        elif block:
            yield first, "\n".join(block)
            first, block = 0, []


def _tokens(snippet: str) -> list[str]:
    s = re.sub(r"<[^<>\n]*>|\"(\.\.\.|…)\"", "PLACEHOLDER", snippet).replace("…", " ... ")
    s = re.sub(r"\d?>&\d", " ", s)  # 2>&1
    s = re.sub(r"(?<=\s)\d?>>?\s*\S+", " ", s)  # > file
    s = re.sub(r"(?<=[^\s|])\|(?=[^\s|])", ALT, s)
    s = re.sub(r"(?<!\S)\[|\](?!\S)", " ", s)  # [--opt X] -> --opt X
    try:
        lex = shlex.shlex(s, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        return list(lex)
    except ValueError:  # an unbalanced quote in prose
        return s.split()


def _segments(tokens: list[str]):
    segment: list[str] = []
    for token in tokens:
        if token in SEPARATORS:
            if segment:
                yield segment
            segment = []
        else:
            segment.append(token)
    if segment:
        yield segment


def _command(segment: list[str]):
    """("echomimic" | "echomimic-train" | "queue" | "bench/x.py" | "module:<name>", arguments), or None."""
    toks = list(segment)
    if len(toks) > 2 and toks[1] == "=":  # `B = python bench/x.py ...`: a name for the command
        toks = toks[2:]
    while toks and (toks[0] in ("$", "fix:", "time", "sudo", "do", "then", "else", "nohup", "exec", "env", "!") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", toks[0])
                    or (toks[0].endswith("/time") and toks[0].startswith("/"))):
        toks = toks[1:]
        if toks and toks[0] == "-v":  # /usr/bin/time -v
            toks = toks[1:]
    if not toks:
        return None
    head = toks[0].rsplit("/", 1)[-1]
    if head in ("echomimic", "echomimic-train"):
        return head, toks[1:]
    module = None
    if re.fullmatch(r"python(3(\.\d+)?)?", head) and len(toks) > 1:
        if toks[1] == "-m" and len(toks) > 2:
            module, rest = toks[2], toks[3:]
        elif re.fullmatch(r"(\./)?(bench/)?\w+\.py", toks[1]) and (ROOT / "bench" / toks[1].rsplit("/", 1)[-1]).is_file():
            return f"bench/{toks[1].rsplit('/', 1)[-1]}", toks[2:]  # also `cd bench && python bench_x.py`
    elif head == "accelerate" and "-m" in toks:
        at = toks.index("-m")
        module, rest = (toks[at + 1], toks[at + 2:]) if at + 1 < len(toks) else (None, [])
    elif re.fullmatch(r"(\./)?bench/\w+\.py", toks[0]):
        return toks[0].removeprefix("./"), toks[1:]
    if module is None:
        return None
    if module in ("echomimic_lib", "echomimic_lib.cli", "echomimic_lib.cli.__main__"):
        return "echomimic", rest
    if module == "echomimic_lib.jobs.queue_client":
        return "queue", rest
    if module in ("trainer", "trainer.cli", "trainer.__main__"):
        return "echomimic-train", rest
    if module.split(".")[0] in ("echomimic_lib", "trainer"):
        return f"module:{module}", rest
    return None


def _variants(args: list[str]):
    width = max([t.count(ALT) + 1 for t in args] or [1])
    for i in range(width):
        yield [p for t in args for p in [t.split(ALT)[i % (t.count(ALT) + 1)]] if not re.fullmatch(r"\.\.\.|…", p)]


# ---------------------------------------------------------------- the parsers, made lenient about what prose leaves out


def _raise(message):
    raise DocLineError(message)


def _exit(status=0, message=None):
    if status:
        raise DocLineError(message or f"exit {status}")
    raise _Done


class _Choices(list):
    def __contains__(self, value):
        return value is None or (isinstance(value, str) and bool(PLACEHOLDER.match(value))) or list.__contains__(self, value)


def _typed(kind):
    @functools.wraps(kind)
    def convert(text):
        return text if PLACEHOLDER.match(text) else kind(text)
    return convert


def _lenient(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    stack, seen = [parser], set()
    while stack:
        p = stack.pop()
        if id(p) in seen:
            continue
        seen.add(id(p))
        p.allow_abbrev = False
        p.error, p.exit = _raise, _exit
        p.print_help = p.print_usage = lambda file=None: None
        for group in p._mutually_exclusive_groups:
            group.required = False
        for action in p._actions:
            action.required = False
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
                continue
            if not action.option_strings and action.nargs in (None, "+"):
                action.nargs = "?" if action.nargs is None else "*"
            if callable(action.type):
                action.type = _typed(action.type)
            if action.choices is not None:
                action.choices = _Choices(action.choices)
    return parser


def _literal_names(tree: ast.Module) -> dict:
    """Module-level NAME = [...] / {...: ...} / (...): the values choices=list(NAME) or sorted(NAME) would give."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Dict) and all(isinstance(k, ast.Constant) for k in value.keys):
                names[node.targets[0].id] = [k.value for k in value.keys]
            elif isinstance(value, (ast.List, ast.Tuple, ast.Set)):
                try:
                    names[node.targets[0].id] = list(ast.literal_eval(value))
                except ValueError:
                    pass
    return names


def _choices_of(node: ast.expr, names: dict):
    try:
        return list(ast.literal_eval(node))
    except ValueError:
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("list", "sorted", "tuple") \
            and len(node.args) == 1:
        node = node.args[0]
    return names.get(node.id) if isinstance(node, ast.Name) else None


@functools.lru_cache(maxsize=None)
def bench_parser(script: str) -> argparse.ArgumentParser:
    """The script's argparse, rebuilt from its source's add_argument calls (no import: bench scripts load torch)."""
    tree = ast.parse((ROOT / script).read_text(encoding="utf-8"))
    names = _literal_names(tree)
    p = argparse.ArgumentParser(prog=script, conflict_handler="resolve")
    types = {"int": int, "float": float, "str": str, "Path": Path}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        flags = [a.value for a in node.args if isinstance(a, ast.Constant)]
        kw: dict = {}
        for k in node.keywords:
            if k.arg == "type" and isinstance(k.value, ast.Name) and k.value.id in types:
                kw["type"] = types[k.value.id]
            elif k.arg == "choices":
                if (choices := _choices_of(k.value, names)) is not None:
                    kw["choices"] = choices
            elif k.arg in ("action", "nargs", "const", "dest"):
                try:
                    kw[k.arg] = ast.literal_eval(k.value)
                except ValueError:
                    pass
        if flags:
            p.add_argument(*flags, **kw)
    return p


def parser_for(program: str) -> argparse.ArgumentParser:
    if program == "echomimic":
        from echomimic_lib.cli import build_parser
    elif program == "echomimic-train":
        from trainer.cli import build_parser
    elif program == "queue":
        from echomimic_lib.jobs.queue_client import build_parser
    else:
        return _lenient(bench_parser(program))
    return _lenient(build_parser())


def check_command(program: str, args: list[str]) -> str | None:
    """Why the documented command would not parse, or None."""
    if program.startswith("module:"):
        module = program.split(":", 1)[1]
        return None if importlib.util.find_spec(module) else f"no module {module}"
    if program.startswith("bench/") and not (ROOT / program).is_file():
        return f"{program} does not exist"
    if program == "echomimic" and "queue" in args[:2]:
        at = args.index("queue")
        if all(a.startswith("-") for a in args[:at]):
            program, args = "queue", args[at + 1:]
    for variant in _variants(args):
        if why := _parse(program, variant):
            if not (variant and variant[-1].startswith("-") and "expected" in why):
                return why
            if why := _parse(program, [*variant, "PLACEHOLDER"]):  # prose naming an option (`echomimic poses --video`)
                return why
    return None


def _parse(program: str, args: list[str]) -> str | None:
    try:
        parser_for(program).parse_args(args)
    except _Done:
        pass
    except DocLineError as exc:
        return str(exc)
    return None


def command_failures(name: str, text: str) -> list[str]:
    out = []
    for number, snippet in snippets(text):
        for segment in _segments(_tokens(snippet)):
            found = _command(segment)
            if found and (why := check_command(*found)):
                out.append(f"{name}:{number}: {snippet.strip()}\n    -> {why}")
    return out


def docs_texts():
    return [(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in DOCS]
