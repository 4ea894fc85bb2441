"""``echomimic doctor``: what this machine and models folder can run, and the command that fixes each gap
(read-only: :mod:`echomimic_lib.jobs.doctor`). Exit status 0 when everything checked is ready, 1 when not, 2 for a
bad argument (a models folder that cannot be one, a --comfyui without models/)."""
from __future__ import annotations

import json

from .common import say


def _cmd_doctor(args) -> int:
    from ..jobs.models_folder import default_models_dir, models_root
    from ..jobs.doctor import diagnose
    from ..jobs.doctor.report import render

    from ..errors import EchoMimicError

    if args.models and args.comfyui:
        raise EchoMimicError("--models and --comfyui: give one (with --comfyui the models folder is its models/echomimic).")
    if args.extra_model_paths and not args.comfyui:
        raise EchoMimicError("--extra-model-paths: goes with --comfyui (the yaml files ComfyUI was started with through "
                             "--extra-model-paths-config).")
    for opt in ("base_directory", "input_directory", "output_directory"):
        if getattr(args, opt) is not None and not args.comfyui:
            name = "--" + opt.replace("_", "-")
            raise EchoMimicError(f"{name}: goes with --comfyui (ComfyUI's own {name}, as it was started with).")
    default = default_models_dir()
    # a models folder that cannot be one (a file, a link loop or to nothing, the folder above it): said as animate says
    # it, exit 2, not a report whose every fix would download into it (with --comfyui, its own folders are checked)
    root = default if args.comfyui else models_root(args)
    report = diagnose(root, args.weights, args.variant, default_root=default, strict=args.strict, comfyui=args.comfyui,
                      extra_paths=args.extra_model_paths or (), base_directory=args.base_directory,
                      input_directory=args.input_directory, output_directory=args.output_directory)
    if args.json:
        say(json.dumps(report, indent=2))
    else:
        for line in render(report):
            say(line)
    return 0 if report["ok"] else 1


def add_commands(sub) -> None:
    d = sub.add_parser("doctor", help="check this install and models folder (read-only): what runs, the fix for each gap",
                       description="Say what this machine and models folder can run: Python, PyTorch and its GPUs, the "
                                   "packages against the pack's bounds, each weight set and variant (ready, missing files, "
                                   "tiny random weights, a broken file), the shared parts, and the exact command that fixes "
                                   "each gap. Read-only: nothing is downloaded, written or loaded. Exit status 0 when "
                                   "everything checked is ready (tiny sets count, unless --strict), 1 when something is "
                                   "missing or broken, 2 when an argument is wrong (e.g. --models or $ECHOMIMIC_MODELS "
                                   "a file, not a folder): the error says which, and no report is printed.")
    d.add_argument("--models", help="models folder (default: $ECHOMIMIC_MODELS, else ~/.cache/echomimic, as animate)")
    d.add_argument("--weights", choices=["v1_audio", "v1_pose", "v2", "v3-flash"], default=None,
                   help="check only this set (and what its renders need; default: every set)")
    d.add_argument("--variant", choices=["normal", "acc"], default=None,
                   help="V1/V2: check only this variant (default: both)")
    d.add_argument("--comfyui", metavar="PATH", help="a ComfyUI install (its folder, or its models folder): check its "
                   "echomimic folders and the core folders the V3 workflows read (text_encoders, clip_vision, vae), "
                   "extra_model_paths.yaml's folders included; 'auto': the ComfyUI this pack is in, else ComfyUI Desktop, "
                   "from its config.json and extra_models_config.yaml)")
    d.add_argument("--extra-model-paths", metavar="FILE", action="append", default=[],
                   help="with --comfyui: a yaml file ComfyUI is started with (--extra-model-paths-config FILE); "
                   "repeatable. ComfyUI's own extra_model_paths.yaml is always read")
    d.add_argument("--base-directory", metavar="DIR", help="with --comfyui: ComfyUI's --base-directory, as it is started "
                   "(models, input, output and custom_nodes are then DIR/models etc.; the yaml files keep their base_path)")
    d.add_argument("--input-directory", metavar="DIR", help="with --comfyui: ComfyUI's --input-directory (pose folders "
                   "in DIR/echomimic_poses)")
    d.add_argument("--output-directory", metavar="DIR", help="with --comfyui: ComfyUI's --output-directory (its vae, "
                   "clip, loras, diffusion_models sub-folders are model folders too)")
    d.add_argument("--strict", action="store_true", help="tiny random-weight sets count as not ready (exit 1), for "
                   "scripts that check a production machine")
    d.add_argument("--json", action="store_true", help="the report as JSON (for tools and scripts)")
    d.set_defaults(func=_cmd_doctor)
