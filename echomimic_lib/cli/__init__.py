"""The ``echomimic`` command: one module per command (``animate`` and ``download``, ``batch``, ``dub``, ``evaluate``,
``landmarks``: V1 driving landmarks, ``poses``: V2 hand-pose sequences, ``doctor``: a read-only install check, ``weights``: make-tiny and convert; ``queue`` is
:mod:`echomimic_lib.jobs.queue_client`), shared helpers in :mod:`.common`.

Exit codes: 0 success, 2 bad input or a missing file (the message says what and how to fix it), 130
interrupted (Ctrl-C; nothing half-written is left), 143 terminated (SIGTERM, the same clean-up), 141 stdout
closed by its reader (``| head``; quietly), 1 anything else (out of memory, or a bug: then a traceback and a
request to report it). How the process ends: :mod:`.process_exit`.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import EchoMimicError, printable
from . import process_exit
from .common import HelpFormatter, SubParser, expand_home, refuse_empty_paths, setup_logging

ISSUES_URL = "https://github.com/echomimic-comfy/comfyui-echomimic/issues"
# a release named as the command (`echomimic v3 --help`): said with what to run instead, not argparse's "invalid choice"
VERSION_WORDS = {"v1": "v1", "echomimic-v1": "v1", "v2": "v2", "echomimic-v2": "v2", "v3": "v3-flash",
                 "v3-flash": "v3-flash", "flash": "v3-flash", "flash-pro": "v3-flash", "v3-flash-pro": "v3-flash",
                 "echomimic-v3": "v3-flash", "echomimicv3": "v3-flash"}


def build_parser() -> argparse.ArgumentParser:
    p = process_exit.PipeAwareParser(prog="echomimic", description="EchoMimic V1/V2 talking-head and half-body animation.",
                                formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", dest="verbose_all", action="store_true", help="debug logging for every command")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=SubParser)

    from . import animate, batch, doctor, dub, evaluate, landmarks, poses, weights

    weights.add_commands(sub)
    sub.add_parser("queue", help="queue portraits x audios on a running ComfyUI (POST /prompt); see `echomimic queue --help`",
                   add_help=False)

    for module in (animate, evaluate, dub, batch, landmarks, poses, doctor):  # a new command: its module here, with add_commands(sub)
        module.add_commands(sub)
    return p


def _call(args) -> int:
    """The command; the long renders (``animate``, ``dub``) run in a worker thread, so that Ctrl-C answers at once
    even when one tensor operation takes many seconds (a 2048 px frame on a CPU): the temporary files are removed
    and the process ends with 130 (SIGTERM: 143), instead of waiting for the operation to return to Python."""
    if getattr(args, "command", None) not in ("animate", "dub"):
        return int(args.func(args) or 0)
    import threading

    box: dict = {}

    def work():
        try:
            box["rc"] = int(args.func(args) or 0)
        except BaseException as exc:  # handed to the main thread, which reports it like any other
            box["exc"] = exc

    import os

    try:  # the real stderr, for the interrupt's line: the worker may have sent fd 2 elsewhere for a while
        terminal = os.dup(2)  # (MediaPipe's native log lines: echomimic_lib.landmarks.mp_models.quiet_native_logs)
    except OSError:
        terminal = None
    worker = threading.Thread(target=work, name=f"echomimic {args.command}", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (process_exit.Terminated)
        from ..io.file_safety import remove_partials, run_keepers

        run_keepers()  # e.g. a resumable render's last finished step (before the partial files go)
        remove_partials()
        text = f"\n{process_exit.interrupt_word(exc)}; nothing half-written was left behind.\n"
        try:
            sys.stderr.flush()
            if terminal is None:
                sys.stderr.write(text)
                sys.stderr.flush()
            else:
                os.write(terminal, text.encode())
        except (OSError, ValueError):  # stderr gone too: the exit code still says it
            pass
        os._exit(process_exit.interrupt_exit_code(exc))  # the worker may be inside one long native operation: do not wait for it
    finally:
        if terminal is not None:
            os.close(terminal)
    if "exc" in box:
        raise box["exc"]
    return box["rc"]


def _run(args) -> int:
    try:
        return _call(expand_home(args))
    except EchoMimicError as exc:
        sys.stderr.write(f"error: {printable(exc)}\n")
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (process_exit.Terminated)
        sys.stderr.write(f"{process_exit.interrupt_word(exc)}; nothing half-written was left behind.\n")
        return process_exit.interrupt_exit_code(exc)
    except OSError as exc:  # the file system said no (permissions, a file where a folder belongs, a full disk)
        if isinstance(exc, BrokenPipeError) and process_exit.output_closed():
            raise  # stdout's reader went away (`| head`): main() ends quietly
        from ..io.os_errors import os_error_text

        sys.stderr.write(f"error: {printable(os_error_text(exc))}\n")
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
    """The ``echomimic`` command (exit codes: the module's notes)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return process_exit.run_command(lambda: _main(argv), "; nothing half-written was left behind.")


def version_hint(argv: list) -> str | None:
    """What to run instead when the command (the first word that is not ``-v``) names a release, else None."""
    word = next((a for a in argv if a not in ("-v", "--verbose")), "")
    version = VERSION_WORDS.get(word.lower())
    if version is None:
        return None
    name = {"v1": "EchoMimic V1", "v2": "EchoMimicV2", "v3-flash": "EchoMimicV3 flash-pro"}[version]
    return (f"'{word}' is not a command: {name} runs as `echomimic animate --version {version} "
            f"--reference IMAGE --audio SPEECH -o OUT.mp4` (options: `echomimic animate --help`).")


def _main(argv: list) -> int:
    if argv[:1] == ["queue"]:  # its own argument parser
        from ..jobs.queue_client import main as queue_main

        return int(queue_main(argv[1:], prog="echomimic queue", parser_class=process_exit.PipeAwareParser) or 0)
    try:
        parser = build_parser()
        hint = version_hint(argv)
        if hint:
            parser.error(hint)  # the usage and one line, exit 2
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed why
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    setup_logging(verbose=args.verbose_all or getattr(args, "verbose", False), quiet=getattr(args, "quiet", False))
    try:
        refuse_empty_paths(parser, args)
    except EchoMimicError as exc:
        sys.stderr.write(f"error: {printable(exc)}\n")
        return 2
    return _run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
