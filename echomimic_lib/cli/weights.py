"""``echomimic make-tiny`` (a random-weight model folder) and ``echomimic convert`` (.pth -> .safetensors)."""
from __future__ import annotations

from pathlib import Path

from .common import say

MAX_SEED = 2**32 - 1  # make-tiny: each weight set draws from seed + a small offset (tiny._seed_of)


def _cmd_make_tiny(args) -> int:
    from ..io.video_writer import OutputError, _nearest_existing, _probe_writable
    from ..tiny import EXTRA_MODELS, make_tiny

    if not str(args.directory).strip():  # `make-tiny $DIR` with DIR unset: not the current folder
        raise OutputError("make-tiny: the folder name is empty; give the folder to write, e.g. make-tiny models/tiny.")
    if not 0 <= args.seed <= MAX_SEED:
        raise OutputError(f"--seed {args.seed}: use a whole number from 0 to 2^32-1.")
    target = Path(args.directory).expanduser()
    if target.exists() and not target.is_dir():
        raise OutputError(f"make-tiny {target}: this is a file, not a folder; give a new or existing folder.")
    base = _nearest_existing(target)
    if not base.is_dir():
        raise OutputError(f"make-tiny {target}: {base} is a file, not a folder; choose a folder inside a folder.")
    _probe_writable(base)
    if args.version == "v3-flash":
        from ..models.wan.tiny import write_tiny_v3
        from ..tiny import write_staged

        target = target / "echomimic" / "v3-flash" if args.layout == "comfyui" else target  # the V3 Loader's folder
        _refuse_a_models_folder(target)
        try:  # staged as the V1/V2 set: a file there with other content (another --seed) is kept unless --force
            out = write_staged(target, lambda staging: write_tiny_v3(staging, args.seed), args.force)
        except Exception as exc:
            if isinstance(exc, OSError) or _refused(exc):
                raise _write_failed(exc, target, "write into") from exc
            raise
        say(f"tiny random-weight EchoMimicV3 flash-pro set written to {out} (use it as <models>/v3-flash; it animates noise)")
        return 0
    try:
        out = make_tiny(target, version=args.version, layout=args.layout, seed=args.seed, fmt="." + args.format, force=args.force)
    except Exception as exc:  # OSError, or torch's / safetensors' own error for a full disk
        if isinstance(exc, OSError) or _refused(exc):
            raise _write_failed(exc, target, "write into") from exc
        raise
    root = out / "echomimic" if args.layout == "comfyui" else out
    say(f"tiny random-weight EchoMimic models written to {out} (they animate noise, not faces: for tests and smoke runs)")
    for where, used_by, source in EXTRA_MODELS:
        say(f"  not included, needed for {used_by}: {root / where}  (from {source})")
    return 0


def _refuse_a_models_folder(target: Path) -> None:
    """``make-tiny DIR --version v3-flash`` writes the V3 set itself (what ``<models>/v3-flash/`` holds): given the
    models folder, its folders landed beside v1/ and v2/, where nothing looks for them."""
    from ..io.video_writer import OutputError

    parts = [name + "/" for name in ("v1", "v2", "sd-vae-ft-mse", "audio_processor", "v3-flash") if (target / name).is_dir()]
    if parts:
        raise OutputError(f"make-tiny {target} --version v3-flash: {target} is a models folder ({', '.join(parts)} in it); "
                          f"the V3 set goes into its v3-flash/ folder: give make-tiny {target / 'v3-flash'} --version v3-flash.")


def _refused(exc: BaseException) -> bool:
    from ..io.os_errors import write_refused

    return write_refused(exc, "") is not None


def _write_failed(exc: BaseException, path, doing: str = "write", kept: str | None = None):
    """``cannot write <path>: ...`` in :mod:`~echomimic_lib.io.os_errors`' one form, naming ``path`` (a file written
    in a staging folder is named by the folder the user gave)."""
    from ..io.os_errors import KEPT, WriteError, write_refused
    from ..io.video_writer import OutputError

    cause = exc.__cause__ if isinstance(exc, WriteError) and exc.__cause__ is not None else exc
    name = getattr(exc, "filename", None)
    return write_refused(cause, path, KEPT if kept is None else kept, doing) or OutputError(
        f"cannot {doing} {path}: {getattr(exc, 'strerror', None) or exc}{': ' + str(name) if name else ''}; nothing "
        "partial was kept. Check that the folder is writable.")


def _cmd_convert(args) -> int:
    from ..io.video_writer import OutputError
    from ..io.weights import convert

    if not str(args.dst).strip():  # `convert a.pth $OUT` with OUT unset: not the current folder
        raise OutputError("convert: the destination is empty; give the .safetensors file or the folder to write.")
    try:
        written = convert(args.src, args.dst, force=args.force)
    except OSError as exc:
        from ..io.os_errors import WriteError

        if isinstance(exc, WriteError):
            raise  # names the file it could not write
        if exc.errno is not None and exc.filename and Path(exc.filename).resolve() == Path(args.src).resolve():
            raise  # the source itself: the generic message names it
        raise _write_failed(exc, args.dst) from exc
    for p in written:
        say(f"wrote {p}")
    return 0


def add_commands(sub) -> None:
    t = sub.add_parser("make-tiny", help="write a tiny random-weight model folder (tests, smoke runs)",
                       description="Write a complete model folder with tiny random weights in the official file layout.")
    t.add_argument("directory", help="folder to write (created; ComfyUI's models/ folder with --layout comfyui)")
    t.add_argument("--version", choices=["v1", "v2", "all", "v3-flash"], default="all",
                   help="all: v1/ and v2/ side by side with the shared VAE and whisper; v1 or v2: that release's files "
                        "flat in DIRECTORY, like its pretrained_weights/; v3-flash: the EchoMimicV3 flash-pro set itself (DIRECTORY is "
                        "<models>/v3-flash; with --layout comfyui models/echomimic/v3-flash)")
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
