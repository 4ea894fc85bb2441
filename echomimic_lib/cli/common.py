"""What every ``echomimic`` sub-command shares: help formatting, ``-v``/``-q``, logging, the progress bar.

- Help: ``(default: X)`` is added to an option's help unless the help already states its default, the
  option is required, or it has no meaningful default (None, a switch that is off).
- Logging at the default level: our own INFO lines as plain text, warnings as ``warning: ...``;
  third-party warnings (Python ``warnings``, huggingface_hub's per-file notes, diffusers / transformers
  chatter) only with ``-v``. MediaPipe's C++ lines are held back where MediaPipe runs
  (:func:`echomimic_lib.landmarks.mp_models.quiet_native_logs`).
- The progress bar appears when the first step is reported (not while models load).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .process_exit import PipeAwareParser

OUR_LOGGERS = ("echomimic_lib", "trainer", "nodes")
CHATTY = ("huggingface_hub", "diffusers", "transformers", "urllib3", "filelock", "httpx", "accelerate", "py.warnings", "PIL",
          "matplotlib", "numba")


def say(text: str) -> None:
    """Command-line output (the library itself logs)."""
    sys.stdout.write(f"{text}\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS or action.required
                or "default" in text.lower()
                or (not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: %(default)s)"


class SubParser(PipeAwareParser):
    """Sub-command parser: our help formatter, ``-v`` / ``-q`` after the sub-command too, and ``--help`` into a closed
    pipe ends with 141 (:class:`~echomimic_lib.cli.process_exit.PipeAwareParser`)."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        kwargs.setdefault("conflict_handler", "resolve")  # a command may define its own -q
        super().__init__(*args, **kwargs)
        if kwargs.get("add_help", True):
            self.add_argument("-v", "--verbose", action="store_true", help="debug logging, incl. third-party warnings")
            self.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no status lines: only warnings, errors and the result "
                                                                              "(the wrote line, the table or JSON on stdout)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``animate`` and ``dub`` share with the same meaning: context windows, precision, device, speed."""
    p.add_argument("--context-frames", type=int, default=12, help="frames per context window, 1..32")
    p.add_argument("--context-overlap", type=int, default=3, help="frames shared by neighbouring windows, 0..context-frames - 1")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="weight precision; auto: bf16 (or fp16) on a CUDA GPU, fp16 on Apple MPS (the VAE as ComfyUI "
                        "keeps it there), fp32 on the CPU")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps")
    add_speed_options(p)


def add_speed_options(p: argparse.ArgumentParser) -> None:
    """The V1/V2 speed options (see :mod:`echomimic_lib.speed`); ``batch`` takes them for every row."""
    p.add_argument("--compile", action="store_true",
                   help="regional torch.compile of the denoiser: its first call per batch shape compiles (about a minute "
                        "on a GPU, several on the CPU), then each call is about 20-25%% faster (H200); the output differs "
                        "only by float rounding. Not with --low-vram. --version v3-flash: each transformer block")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="record the denoiser call once per generation as a CUDA graph and replay it (no kernel launch "
                        "overhead); needs a CUDA GPU; not with --low-vram")
    p.add_argument("--deep-cache", type=int, default=0, metavar="N",
                   help="DeepCache: a full denoiser pass every N steps, the others reuse its deep features (2-3 typical; "
                        "faster, changes the output; 0 = off)")
    p.add_argument("--deep-cache-branch", type=int, default=0, metavar="B",
                   help="with --deep-cache: the DeepCache branch, 0 (the shallowest, fastest) to 11; a larger one "
                        "recomputes more of the denoiser in the cached steps")


class _Format(logging.Formatter):
    def __init__(self, verbose: bool):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s", "%H:%M:%S")
        self.verbose = verbose

    def format(self, record):
        from ..errors import printable

        text = printable(super().format(record))  # (a file name or a server's words with a terminal escape in them)
        if not self.verbose and record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return text


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Console logging for one command (idempotent: replaces the handler a previous call added)."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_echomimic", False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._echomimic = True
    handler.setFormatter(_Format(verbose))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    ours = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    logging.captureWarnings(True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not verbose:
        for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
            os.environ.setdefault(var, "error")
        os.environ.setdefault("HF_HUB_DISABLE_SYMLINKS_WARNING", "1")


class ProgressBar:
    """``progress(done, total)`` callback that opens a tqdm bar on its first call and closes it when done."""

    def __init__(self, desc: str = "sampling", unit: str = "window", disable: bool = False):
        self.desc, self.unit, self.disable = desc, unit, disable
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.disable:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


TEXT_OPTIONS = frozenset({"prompt", "negative_prompt"})  # words, not paths


def _home(value):
    if isinstance(value, str) and (value == "~" or value.startswith(("~/", "~" + os.sep))):
        return os.path.expanduser(value)
    if isinstance(value, list):
        return [_home(v) for v in value]
    return value


def _windows(value, name: str):
    """A path written the Windows way where ``/`` separates folders (as batch manifests read them): ``.\\me.png`` or
    ``out\\dub.mp4`` is ``./me.png`` / ``out/dub.mp4`` when that file or its folder is there (a name that holds a ``\\``
    and exists is kept); ``C:\\...`` or ``\\\\server\\...`` cannot be opened here: refused, before ``-o C:\\out\\x.mp4``
    becomes a file of that name in the current folder."""
    if isinstance(value, list):
        return [_windows(v, name) for v in value]
    if os.sep != "/" or not isinstance(value, str) or "\\" not in value or os.path.lexists(value):
        return value
    import re

    from ..errors import EchoMimicError

    if re.match(r"^(?:[A-Za-z]:[\\/]|\\\\)", value):
        here = ("/mnt/" + value[0].lower() + "/" + value[3:].replace("\\", "/")) if value[1] == ":" else None
        raise EchoMimicError(f"{value} ({name.replace('_', '-')}) is a Windows path, which this computer cannot open; give "
                             "the file's path here" + (f" (under WSL, C:\\ is /mnt/c/: {here})." if here else "."))
    alt = value.replace("\\", "/")
    return alt if os.path.lexists(alt) or os.path.isdir(os.path.dirname(alt) or ".") and "/" in alt.rstrip("/") else value


EMPTY_OK = TEXT_OPTIONS | {"parts"}  # '' means something (no parts)
OWN_EMPTY_CHECK = {("landmarks", "output"), ("landmarks", "preview"), ("poses", "output"), ("poses", "preview"),
                   ("evaluate", "plot"), ("make-tiny", "directory"), ("convert", "dst"), ("batch", "*")}  # (with examples)
WHAT = {"reference": "the reference image (png, jpg, webp)", "audio": "the speech file (wav, mp3, flac, m4a or a video "
        "with sound)", "video": "the video file", "output": "the output file", "compare": "the second video to score beside "
        "the first", "models": "the models folder", "mediapipe_model": "MediaPipe's face_landmarker.task file",
        "lora": "the LoRA .safetensors file", "landmarks": "the landmark file or folder", "real": "a real video or a folder "
        "of them", "preview_audio": "the preview's sound (a wav or a video with sound)", "comfyui": "the ComfyUI folder",
        "extra_model_paths": "the yaml file", "src": "the .pth file or folder",
        "device": "a device (auto, cpu, cuda, cuda:N or mps)"}


def refuse_empty_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """An empty path (``--compare "$OTHER"`` with OTHER unset in a script) is said as empty with what to give, before
    anything runs: never taken as not given, nor as the current folder (``--device "$DEVICE"``: never the default). Every
    string option and positional of the command counts except :data:`EMPTY_OK`; :data:`OWN_EMPTY_CHECK`'s say it
    themselves."""
    from ..errors import EchoMimicError

    command = getattr(args, "command", None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    own = sub.choices.get(command) if sub is not None and command else None
    if own is None or (command, "*") in OWN_EMPTY_CHECK:
        return
    for action in own._actions:
        if action.dest in EMPTY_OK or (command, action.dest) in OWN_EMPTY_CHECK:
            continue
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if not any(isinstance(v, str) and not v.strip() for v in values):
            continue
        flag = action.option_strings[0] if action.option_strings else (action.metavar or action.dest.upper())
        what = WHAT.get(action.dest) or (action.help or "the path").split(";")[0].split(" (")[0]
        leave = "" if action.required or not action.option_strings else f", or leave {flag} out"
        raise EchoMimicError(f"{flag} is empty (an unset variable in a script?); give {what}{leave}.")


def expand_home(args: argparse.Namespace) -> argparse.Namespace:
    """``~`` at the start of a path the shell left alone (``--reference=~/me.png``: no shell expands a ``~`` after
    ``=``) is the home folder, as it would be before a space; a Windows path is read as batch manifests read it
    (:func:`_windows`); text options are left as written."""
    for name, value in vars(args).items():
        if name not in TEXT_OPTIONS:
            setattr(args, name, _windows(_home(value), name))
    return args
