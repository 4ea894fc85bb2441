"""Write a random-weight model folder for ``echomimic animate --models DIR`` (the GPU check, issue 23).

    python bench/gpu_weights.py DIR                 # official sizes (SD1.5 UNets, SD VAE), fp16, built on CUDA
    python bench/gpu_weights.py DIR --tiny          # the test architecture (CPU, seconds): the dry run

V1 audio (``DIR/v1``) and V2 (``DIR/v2``), normal variant only, plus the shared parts (VAE, whisper-tiny, the
two config files), in the official file layout. No marker file: the command line treats the folder like
downloaded weights. Never carried to the GPU machine: written there in seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from echomimic_lib.config import SD15, TINY  # noqa: E402
from echomimic_lib.tiny import SD_VAE_CONFIG, TINY_VAE_CONFIG, write_shared, write_weight_set  # noqa: E402

SETS = (("v1", "v1_audio"), ("v2", "v2"))


def write(root: Path, tiny: bool, device: str, dtype: torch.dtype) -> list[Path]:
    cfg = TINY if tiny else SD15
    written = []
    for i, (folder, weights) in enumerate(SETS):
        written += write_weight_set(root / folder, weights, cfg, 100 * i, dtype, variants=("normal",), device=device)
    written += write_shared(root, cfg, 7, vae_config=TINY_VAE_CONFIG if tiny else SD_VAE_CONFIG)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    files = write(args.root, args.tiny, args.device, torch.float32 if args.tiny else torch.float16)
    size = sum(f.stat().st_size for p in files for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    print(f"wrote {len(files)} entries, {size / 1e9:.2f} GB, to {args.root} in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
