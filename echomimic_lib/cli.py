"""The ``echomimic`` command: animate, download, make-tiny, convert, queue."""
from __future__ import annotations

import argparse
import logging
import sys

from .errors import EchoMimicError


def _say(text: str) -> None:
    """Command-line output (the library itself logs)."""
    sys.stdout.write(f"{text}\n")


def _cmd_make_tiny(args) -> int:
    from .tiny import make_tiny

    out = make_tiny(args.directory, version=args.version, layout=args.layout, seed=args.seed, fmt="." + args.format)
    _say(f"tiny random-weight EchoMimic models written to {out}")
    return 0


def _cmd_convert(args) -> int:
    from .weights import convert

    for p in convert(args.src, args.dst):
        _say(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="echomimic", description="EchoMimic V1/V2 talking-head and half-body animation.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("make-tiny", help="write a tiny random-weight model folder (tests, smoke runs)")
    t.add_argument("directory")
    t.add_argument("--version", choices=["v1", "v2", "all"], default=None, help="one release, flat, like its pretrained_weights/ (default: both)")
    t.add_argument("--layout", choices=["official", "comfyui"], default="official", help="comfyui: DIRECTORY is ComfyUI's models/ folder")
    t.add_argument("--format", choices=["pth", "safetensors"], default="pth")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_make_tiny)

    c = sub.add_parser("convert", help="convert .pth weights (a file or a folder) to .safetensors")
    c.add_argument("src")
    c.add_argument("dst")
    c.set_defaults(func=_cmd_convert)

    q = sub.add_parser("queue", help="queue portraits x audios on a running ComfyUI (POST /prompt)", add_help=False)
    q.add_argument("args", nargs=argparse.REMAINDER, help="see `echomimic queue --help`")

    try:
        from . import cli_animate

        cli_animate.add_commands(sub)
    except ImportError:  # pragma: no cover - during development only
        pass
    from . import cli_evaluate

    cli_evaluate.add_commands(sub)
    from . import cli_dub

    cli_dub.add_commands(sub)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["queue"]:  # its own argument parser
        from .queue_client import main as queue_main

        return int(queue_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EchoMimicError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
