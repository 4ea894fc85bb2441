"""``echomimic-train``: prepare | fit | export | presets | plan | v3-fit | v3-export.

Single process: ``echomimic-train fit --config run.yaml``. Several GPUs / nodes: ``accelerate launch
[--num_processes N ...] -m trainer fit --config run.yaml`` (DeepSpeed ZeRO through ``accelerate config``).

Exit codes: 0 success, 2 bad input or a file-system error, 3 ``plan``: a phase does not fit, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM: the same clean-up; in every process of an accelerate launch), 141 stdout closed
by its reader (``| head``; quietly). See :mod:`echomimic_lib.cli.process_exit`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from echomimic_lib.errors import printable

from .cli_checks import DROP_FIXES, check_config_file, check_output_dir, no_clips_message  # noqa: F401 (DROP_FIXES: importable here)


def _cmd_prepare(args) -> int:
    from .data.clean import PrepareConfig
    from .data.prepare import prepare_dataset, summary_table

    cfg = PrepareConfig(kind=args.kind, fps=args.fps, size=args.size or (512 if args.kind == "headshot" else 768),
                        min_seconds=args.min_seconds, max_seconds=args.max_seconds, max_missing_face=args.max_missing_face,
                        max_multi_face=args.max_multi_face, min_face_px=args.min_face_px, scene_threshold=args.scene_threshold,
                        num_shards=args.shards, jpeg_quality=args.jpeg_quality)
    if args.curate:  # curation thresholds (trainer/data/curate.py)
        from .data.curate import load_curate

        cfg.curate = load_curate(args.curate)
    if args.cache_latents:  # checked before any clip is prepared
        if args.kind == "full":
            from .config import ConfigError

            raise ConfigError("--cache-latents: the VAE latent cache is the V1/V2 trainer's; --kind full clips are for "
                              "EchoMimicV3 LoRA training, which caches its own encodings (v3-fit data.cache_dir): leave it out")
        from .data.latent_cache import parse_size, vae_files

        latent_size = parse_size(args.latent_size, cfg.size)
        vae_files(args.cache_latents)  # a wrong VAE path is found now, not after every clip is prepared
    detector = None
    if args.kind in ("halfbody", "pose"):
        if not args.dwpose_dir:
            print(f"error: --kind {args.kind} needs --dwpose-dir (yolox_l.onnx + dw-ll_ucoco_384.onnx)", file=sys.stderr)
            return 2
        from echomimic_lib.pose.dwpose import DWPoseDetector

        detector = DWPoseDetector.from_models_dir(args.dwpose_dir)
    summary = prepare_dataset(args.input, args.output, cfg, args.whisper, args.mediapipe_model, detector, args.worker_index,
                              args.workers, progress=not args.quiet)
    print(summary_table(summary))
    if summary["kept"] == 0:
        print(f"error: {no_clips_message(summary, args.input)}", file=sys.stderr)
        return 2
    if args.cache_latents:  # VAE latents of every clip at the training resolution (trainer/data/latent_cache.py)
        from .data.latent_cache import cache_dataset

        counts = cache_dataset(args.output, args.cache_latents, *latent_size, progress=not args.quiet)
        print(f"latent cache {counts['key']}: {counts['written']} written, {counts['kept']} valid, {counts['removed']} stale removed")
    return 0


def _cmd_fit(args) -> int:
    from .config_file import load_config
    from .loop import fit

    check_config_file(args.config, args.set, "fit", args.preset)
    cfg = load_config(args.config, args.set, preset=args.preset)
    check_output_dir(cfg.output_dir)
    resume = args.resume if args.resume not in (None, "") else None
    result = fit(cfg, resume=True if resume == "latest" else resume)
    if not _first_process():  # the closing lines once, not once per process
        return 0
    if result.get("finished"):  # --resume of a run whose steps were all done: nothing trained
        print(printable(result["finished"]))
        return 0
    what = "the LoRA" if cfg.lora.enabled else "the model"
    dest = "LORA.safetensors" if cfg.lora.enabled else "EXPORT/"
    print(printable(f"finished at step {result['step']}; checkpoints in {result['output_dir']}/checkpoints; export {what} "
                    f"with `echomimic-train export {result['output_dir']} {dest}`"))
    return 0


def _first_process() -> bool:
    """The run's closing line is said once: by the first of the processes `accelerate launch` starts (RANK 0)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _cmd_v3_fit(args) -> int:
    from .v3.config import load_v3_config
    from .v3.loop import fit_v3

    check_config_file(args.config, args.set, "v3-fit")
    cfg = load_v3_config(args.config, args.set)
    check_output_dir(cfg.output_dir)
    resume = args.resume if args.resume not in (None, "") else None
    result = fit_v3(cfg, resume=True if resume == "latest" else resume)
    if not _first_process():  # the closing lines once, not once per process
        return 0
    if result.get("finished"):  # --resume of a run whose steps were all done: nothing trained
        print(printable(result["finished"]))
        return 0
    print(printable(f"finished at step {result['step']}; checkpoints in {result['output_dir']}/checkpoints; "
                    f"export the LoRA with `echomimic-train v3-export {result['output_dir']} LORA.safetensors`"))
    return 0


def _cmd_v3_export(args) -> int:
    import torch

    from .v3.lora import export_wan_lora

    path = export_wan_lora(args.source, args.dest, force=args.force, dtype=getattr(torch, args.dtype), verify=not args.no_verify)
    print(printable(f"wrote {path}; use it with `echomimic animate --version v3-flash --lora {path}` or the EchoMimic V3 LoRA node"))
    return 0


def _cmd_export(args) -> int:
    from .export import export

    formats = {"both": (".pth", ".safetensors"), "pth": (".pth",), "safetensors": (".safetensors",), "peft": ("peft",)}[args.format]
    files = export(args.source, args.dest, ema=args.ema, formats=formats, dtype=args.dtype, link=args.link, verify=not args.no_verify,
                   merge=args.merge, force=args.force)
    adapter = _adapter_base(files[0]) if files and not args.merge else None
    if adapter is not None:  # where the file went (DEST may be a folder) and how it is loaded
        print(printable(f"wrote the LoRA {files[0]}; use it with `echomimic animate --models {adapter} --lora {files[0]}` "
                        "(the model it was trained on) or the EchoMimic LoRA node"))
        return 0
    print(printable(f"exported {len(files)} files to {args.dest}"))
    return 0


def _adapter_base(path) -> str | None:
    """The base model folder of an exported V1/V2 LoRA file (its metadata), or None for another file."""
    import json
    from pathlib import Path

    from echomimic_lib.lora.files import FORMAT

    if Path(path).suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        return None
    try:
        base = json.loads(meta.get("base", "{}"))
    except ValueError:
        base = {}
    return str(base.get("path") or "MODELS") if isinstance(base, dict) else "MODELS"


def _cmd_presets(args) -> int:
    import yaml

    from .presets import PRESETS, preset_dict

    print(yaml.safe_dump(preset_dict(args.name), sort_keys=False) if args.name else "\n".join(PRESETS))
    return 0


def _cmd_plan(args) -> int:
    from .plan import check_plan_inputs, check_plan_numbers, load_plan_config, plan_family, plan_text
    from .presets import PRESETS

    check_plan_numbers(args.gpus, args.gpu_gib, args.peak_tflops, args.mfu)
    check_plan_inputs(args.config, args.preset, args.set, args.all_presets)
    if args.config:
        family, data, decided_by = plan_family(args.config, args.set, args.preset)
        if family == "v3":
            return _plan_v3(args, data, decided_by)
    overrides = list(args.set) + ([f"memory.gpu_gib={args.gpu_gib}"] if args.gpu_gib is not None else [])
    names = list(PRESETS) if args.all_presets else [None]
    over = False
    for name in names:
        cfg = load_plan_config(args.config if name is None else None, overrides, preset=name or args.preset)
        title = name or cfg.preset or args.config or "config"
        text, run = plan_text(cfg, title, gpus=8 if args.gpus is None else args.gpus, peak_tflops=args.peak_tflops,
                              mfu=args.mfu, arch=args.arch)
        print(text + "\n")
        over |= bool(run.over_budget())
    if over:
        print(f"error: some phase does not fit {cfg.memory.gpu_gib:g} GiB per GPU: turn on model.gradient_checkpointing "
              "(memory.checkpointing: layer), mixed_precision: bf16, loss.spatial.decoder_checkpointing, lower "
              "optim.batch_size (raise optim.grad_accum) or loss.decode_frames, or use distributed.strategy: fsdp", file=sys.stderr)
        return 3
    return 0


def _plan_v3(args, data: dict, decided_by: list[str]) -> int:
    """The plan of an EchoMimicV3 LoRA config (trainer/plan/v3.py)."""
    from .config import ConfigError
    from .plan.v3 import GPU_GIB, advice, format_v3_plan, load_v3_plan_config, plan_v3

    if args.arch == "sd15":
        raise ConfigError("--arch sd15 is the V1/V2 UNet; an EchoMimicV3 config plans the release's transformer "
                          "(or --arch tiny, the test network)")
    cfg = load_v3_plan_config(args.config, data, decided_by)
    net, network = None, "the release's transformer"
    if args.arch == "tiny":
        from echomimic_lib.models.wan.tiny import TINY_V3

        net, network = TINY_V3, "the tiny test transformer (--arch tiny)"
    quiet = logging.getLogger("trainer.lora")  # add_adapters's line about the adapters: the plan says it
    level = quiet.level
    quiet.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        plan = plan_v3(cfg, net, network, gpus=1 if args.gpus is None else args.gpus, peak_tflops=args.peak_tflops,
                       mfu=args.mfu, gpu_gib=GPU_GIB if args.gpu_gib is None else args.gpu_gib)
    finally:
        quiet.setLevel(level)
    print(format_v3_plan(plan, args.config) + "\n")
    if not plan.fits:
        print(f"error: {advice(plan)}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    from echomimic_lib.cli.process_exit import PipeAwareParser

    p = PipeAwareParser(prog="echomimic-train", description="Train EchoMimic V1 / V2, and LoRAs on EchoMimicV3 flash-pro (standalone; uses echomimic_lib).")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("prepare", help="videos -> training set (frames, audio, whisper features, landmarks, poses)")
    a.add_argument("input", help="folder of videos (mp4/mov/webm/...; silent videos may have a same-name .wav beside them)")
    a.add_argument("output", help="dataset folder (resumable: re-running skips finished clips)")
    a.add_argument("--kind", choices=["headshot", "halfbody", "pose", "full"], default="headshot",
                   help="headshot: V1 talking heads; halfbody: V2 talking half-body; pose: fully pose-driven clips without "
                        "speech (HumanVid-like, for the V2 pose phases); full: the whole frame in its own aspect, no face or "
                        "pose detector (EchoMimicV3 LoRA training: portraits, half-body, full shots) (default: headshot)")
    a.add_argument("--whisper", help="whisper tiny checkpoint (audio_processor/whisper_tiny.pt): stores the V1/V2 audio "
                   "features (whisper.npy); EchoMimicV3 needs none: without it the V1/V2 trainer refuses the dataset")
    a.add_argument("--mediapipe-model", help="MediaPipe's face_landmarker.task (headshot / half-body face crops and landmarks)")
    a.add_argument("--dwpose-dir", help="folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (half-body / pose)")
    a.add_argument("--fps", type=float, help="frame rate of the stored clips (default 24, V1/V2; 25 for --kind full: "
                   "EchoMimicV3 trains at 25, so prepare other kinds with --fps 25 for it)")
    a.add_argument("--size", type=int, help="stored frame size (default 512 headshot, 768 half-body / pose; full: the "
                   "shorter side, default 768, never enlarged beyond the source)")
    a.add_argument("--min-seconds", type=float, default=1.0)
    a.add_argument("--max-seconds", type=float)
    a.add_argument("--max-missing-face", type=float, default=0.1, help="fraction of frames without a face tolerated (not used by --kind full)")
    a.add_argument("--max-multi-face", type=float, default=0.02, help="fraction of frames with several faces tolerated (not used by --kind full)")
    a.add_argument("--min-face-px", type=float, default=96.0, help="minimum median face height in source pixels (not used by --kind full)")
    a.add_argument("--scene-threshold", type=float, default=27.0, help="content-change score of a scene cut")
    a.add_argument("--shards", type=int, default=16)
    a.add_argument("--jpeg-quality", type=int, default=95)
    a.add_argument("--workers", type=int, default=1, help="number of prepare processes sharing the input")
    a.add_argument("--worker-index", type=int, default=0)
    a.add_argument("--curate", metavar="YAML", help="curation thresholds (a `curate:` section: lip sync, profile views, camera "
                   "motion; docs/training.md)")
    a.add_argument("--cache-latents", metavar="VAE", help="also cache the VAE latents of every clip with this VAE (sd-vae-ft-mse folder)")
    a.add_argument("--latent-size", metavar="WxH", help="training resolution of the cached latents (default: the stored size)")
    a.add_argument("-q", "--quiet", action="store_true")
    a.set_defaults(func=_cmd_prepare)

    f = sub.add_parser("fit", help="train (use `accelerate launch -m trainer fit ...` for several processes)")
    f.add_argument("--config", help="YAML config (may start with `preset: NAME`)")
    f.add_argument("--preset", help="start from a preset when the YAML has none (to replace the YAML's own: "
                                    "--set preset=NAME)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=2e-5 or phases.3b.steps=100")
    f.add_argument("--resume", nargs="?", const="latest", help="continue the run (newest checkpoint) or from a checkpoint folder")
    f.set_defaults(func=_cmd_fit)

    e = sub.add_parser("export", help="checkpoint -> official EchoMimic files (.pth + .safetensors) + configs")
    e.add_argument("source", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    e.add_argument("dest")
    e.add_argument("--ema", action="store_true", help="export the EMA weights")
    e.add_argument("--format", choices=["both", "pth", "safetensors", "peft"], default="both",
                   help="peft (LoRA runs): the adapter file plus peft's save_pretrained layout, <file stem>-peft/<network>/")
    e.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    e.add_argument("--link", action="store_true", help="symlink the VAE and whisper instead of copying")
    e.add_argument("--no-verify", action="store_true", help="skip the strict reload of the written files")
    e.add_argument("--force", action="store_true", help="replace existing files at DEST (never done without it)")
    e.add_argument("--merge", action="store_true", help="LoRA run: write the base model with the adapters merged in (official "
                   "file set) instead of the adapter file")
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("v3-fit", help="train a LoRA on EchoMimicV3 flash-pro (`accelerate launch -m trainer v3-fit ...` for "
                       "several processes)")
    v.add_argument("--config", help="YAML config (docs/training.md, 'EchoMimicV3 LoRA')")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=5e-5 or data.frames=33")
    v.add_argument("--resume", nargs="?", const="latest", help="continue the run (newest checkpoint) or from a checkpoint folder")
    v.set_defaults(func=_cmd_v3_fit)

    x = sub.add_parser("v3-export", help="V3 LoRA checkpoint -> one Wan LoRA .safetensors (ComfyUI layout)")
    x.add_argument("source", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    x.add_argument("dest", help="a .safetensors file, or a folder (<run>-step<N>.safetensors inside)")
    x.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="bfloat16")
    x.add_argument("--force", action="store_true", help="replace an existing file at DEST (never done without it)")
    x.add_argument("--no-verify", action="store_true", help="skip reading the file back against the base model")
    x.set_defaults(func=_cmd_v3_export)

    n = sub.add_parser("plan", help="memory per GPU and expected speed of every phase, or of a V3 LoRA step (no weights or "
                       "GPU needed)")
    n.add_argument("config", nargs="?", help="YAML config: a V1/V2 run (may start with `preset: NAME`) or an EchoMimicV3 "
                   "LoRA run (v3-fit's config, told by its keys: model.path, data.frames, ...)")
    n.add_argument("--preset", help="plan a preset (or start from it when the YAML has none)")
    n.add_argument("--all-presets", action="store_true", help="plan every shipped preset")
    n.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.batch_size=2")
    n.add_argument("--gpus", type=int, help="GPUs the run uses (DDP buckets, FSDP shards; default 8 for V1/V2, the papers', "
                   "1 for a V3 LoRA)")
    n.add_argument("--gpu-gib", type=float, help="memory per GPU to check against (default: V1/V2 memory.gpu_gib, 80; "
                   "V3 LoRA 24, a consumer card)")
    n.add_argument("--peak-tflops", type=float, default=312.0, help="dense bf16 peak of one GPU (default 312: A100 80 GB)")
    n.add_argument("--mfu", type=float, default=0.30, help="model FLOP utilisation assumed (default 0.30, what EchoMimic's "
                   "published timings imply)")
    n.add_argument("--arch", choices=["sd15", "tiny"], help="network size (default: the run's files, else SD1.5; V3: the "
                   "release's transformer, tiny: the test one)")
    n.set_defaults(func=_cmd_plan)

    r = sub.add_parser("presets", help="list presets, or print one")
    r.add_argument("name", nargs="?")
    r.set_defaults(func=_cmd_presets)
    return p


def main(argv=None) -> int:
    from echomimic_lib.cli.process_exit import run_command

    return run_command(lambda: _main(argv))


class _Printable(logging.Formatter):
    """Log lines as a terminal may show them (:func:`echomimic_lib.errors.printable`): a file name or a config value
    with a control character in it (a terminal escape) is written ``\\xNN``, as ``echomimic``'s own lines are."""

    def format(self, record):
        return printable(super().format(record))


def _console_logging(level: int) -> None:
    """``logging.basicConfig`` (a stderr handler when the root logger has none), its lines through :class:`_Printable`
    (tqdm's ``logging_redirect_tqdm`` keeps this formatter while the progress bar is shown)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_Printable("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def _resume_hint(args) -> str:
    return {"fit": " (resume with --resume)", "v3-fit": " (resume with --resume)",
            "prepare": " (run the same command again to go on: finished clips are skipped)"}.get(args.command, "")


def _main(argv) -> int:
    from echomimic_lib.cli.common import expand_home

    args = build_parser().parse_args(argv)
    _console_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # accelerate reports every checkpoint file at INFO: keep the progress bar readable
        for name in ("accelerate", "torch.distributed", "diffusers"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from echomimic_lib.cli.process_exit import interrupt_exit_code, interrupt_word, output_closed
    from echomimic_lib.errors import EchoMimicError

    from .config import ConfigError

    try:
        return int(expand_home(args).func(args) or 0)  # (a Windows drive path is refused there: an error line)
    except (ConfigError, EchoMimicError, FileNotFoundError, FileExistsError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # from the file system, not our own message
            return _os_error(exc)
        print(f"error: {printable(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)  # (4: the run stopped on NaN losses, trainer.loop.NonFiniteError)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (echomimic_lib.cli.process_exit.Terminated)
        print(f"{interrupt_word(exc)}{_resume_hint(args)}", file=sys.stderr)
        return interrupt_exit_code(exc)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and output_closed():
            raise  # stdout's reader went away (`| head`): not a file-system error; main() ends quietly
        return _os_error(exc)


def _os_error(exc: OSError) -> int:
    """The file system said no: a full disk, permissions, a missing folder, a file where a folder belongs."""
    from echomimic_lib.io.file_safety import disk_full
    from echomimic_lib.io.os_errors import WriteError, os_error_text

    kept = " Nothing partial was kept." if disk_full(exc) and not isinstance(exc, WriteError) else ""
    print(f"error: {printable(os_error_text(exc))}{kept}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
