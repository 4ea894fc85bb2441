"""The ``echomimic`` command: animate, download, make-tiny, convert, queue (and the commands registered below).

Exit codes: 0 success, 2 bad input or a missing file (the message says what and how to fix it), 130
interrupted (Ctrl-C; nothing half-written is left), 1 anything else (out of memory, or a bug: then a
traceback and a request to report it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_common import HelpFormatter, SubParser, setup_logging
from .errors import EchoMimicError

ISSUES_URL = "https://github.com/echomimic-comfy/comfyui-echomimic/issues"
# Sub-command modules: each has add_commands(subparsers). Register new commands here.
COMMAND_MODULES = ("cli_animate", "cli_evaluate", "cli_dub")


def _say(text: str) -> None:
    """Command-line output (the library itself logs)."""
    sys.stdout.write(f"{text}\n")


def _cmd_make_tiny(args) -> int:
    from .tiny import EXTRA_MODELS, make_tiny
    from .video_writer import OutputError, _nearest_existing, _probe_writable

    target = Path(args.directory).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputError(f"make-tiny {target}: this is a file, not a folder; give a new or existing folder.")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise OutputError(f"make-tiny {target}: {base} is a file, not a folder; choose a folder inside a folder.")
    _probe_writable(base)
    try:
        out = make_tiny(target, version=args.version, layout=args.layout, seed=args.seed, fmt="." + args.format, force=args.force)
    except OSError as exc:
        raise _write_failed(exc, f"the tiny models into {target}") from exc
    root = out / "echomimic" if args.layout == "comfyui" else out
    _say(f"tiny random-weight EchoMimic models written to {out} (they animate noise, not faces: for tests and smoke runs)")
    for where, used_by, source in EXTRA_MODELS:
        _say(f"  not included, needed for {used_by}: {root / where}  (from {source})")
    return 0


def _write_failed(exc: OSError, what: str):
    from .file_safety import disk_full
    from .video_writer import OutputError

    if disk_full(exc):
        return OutputError(f"no space left on the disk while writing {what}; nothing was written. Free some space or "
                           "choose a folder on another disk.")
    return OutputError(f"writing {what} failed ({exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}); "
                       "nothing was written. Check that the folder is writable.")


def _cmd_convert(args) -> int:
    from .weights import convert

    try:
        written = convert(args.src, args.dst, force=args.force)
    except OSError as exc:
        if exc.errno is not None and exc.filename and Path(exc.filename).resolve() == Path(args.src).resolve():
            raise  # the source itself: the generic message names it
        raise _write_failed(exc, f"the converted weights to {args.dst}") from exc
    for p in written:
        _say(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echomimic", description="EchoMimic V1/V2 talking-head and half-body animation.",
                                formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", dest="verbose_all", action="store_true", help="debug logging for every command")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubParser)

    t = sub.add_parser("make-tiny", help="write a tiny random-weight model folder (tests, smoke runs)",
                       description="Write a complete model folder with tiny random weights in the official file layout.")
    t.add_argument("directory", help="folder to write (created; ComfyUI's models/ folder with --layout comfyui)")
    t.add_argument("--version", choices=["v1", "v2", "all"], default="all",
                   help="all: v1/ and v2/ side by side with the shared VAE and whisper; v1 or v2: that release's files "
                        "flat in DIRECTORY, like its pretrained_weights/")
    t.add_argument("--layout", choices=["official", "comfyui"], default="official",
                   help="comfyui: DIRECTORY is ComfyUI's models/ folder (files go to models/echomimic/, the VAE also to models/vae/)")
    t.add_argument("--format", choices=["pth", "safetensors"], default="pth", help="weight file format")
    t.add_argument("--seed", type=int, default=0, help="random seed of the weights (the same seed gives the same files)")
    t.add_argument("--force", action="store_true", help="replace existing files that differ (never done without it; "
                   "identical files are left as they are)")
    t.set_defaults(func=_cmd_make_tiny)

    c = sub.add_parser("convert", help="convert .pth weights (a file or a folder) to .safetensors")
    c.add_argument("src", help="a .pth file or a folder of them")
    c.add_argument("dst", help="the .safetensors file or output folder")
    c.add_argument("--force", action="store_true", help="replace existing .safetensors files (never done without it)")
    c.set_defaults(func=_cmd_convert)

    sub.add_parser("queue", help="queue portraits x audios on a running ComfyUI (POST /prompt); see `echomimic queue --help`",
                   add_help=False)

    from importlib import import_module

    for name in COMMAND_MODULES:
        import_module(f".{name}", __package__).add_commands(sub)
    return p


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except EchoMimicError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing half-written was left behind.\n")
        return 130
    except OSError as exc:  # the file system said no (permissions, a file where a folder belongs, a full disk)
        where = f" {exc.filename}:" if exc.filename else ""
        sys.stderr.write(f"error:{where} {exc.strerror or exc}; check that the path exists, is a file or folder as "
                         "expected, is writable, and that the disk has space.\n")
        return 2
    except MemoryError as exc:
        sys.stderr.write(f"error: out of memory ({exc or 'host RAM'}); use a smaller --width/--height, fewer --context-frames, "
                         "--acc, or --dtype fp16/bf16 on a GPU.\n")
        return 1
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (GPU), without importing torch here
            sys.stderr.write(f"error: the GPU ran out of memory ({str(exc).splitlines()[0]}); use a smaller --width/--height, "
                             "fewer --context-frames, --acc, or --dtype fp16/bf16.\n")
            return 1
        import traceback

        traceback.print_exc()
        sys.stderr.write(f"\nThis is a bug in EchoMimic, not a problem with your input. Please report it at {ISSUES_URL} "
                         "with the command line and the output above.\n")
        return 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["queue"]:  # its own argument parser
        from .queue_client import main as queue_main

        return int(queue_main(argv[1:], prog="echomimic queue") or 0)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed why
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    setup_logging(verbose=args.verbose_all or getattr(args, "verbose", False), quiet=getattr(args, "quiet", False))
    return _run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
