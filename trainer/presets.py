"""Presets: the papers' recipes as config dictionaries (a YAML file with ``preset: NAME`` starts from one).

Paper facts used (EchoMimic arXiv 2407.08136, EchoMimicV2 arXiv 2411.10061; see docs/training.md):
- V1: two stages of 30k steps, batch 4 per GPU on 8 GPUs, 512 x 512, lr 1e-5; stage 1 single frames with
  reference / denoising UNet / landmark encoder / audio attention trained, stage 2 motion modules only;
  Random Landmark Selection; L = L_latent + lambda * L_spatial with w(t) = cos(t*pi/2T).
- V2: spatial stage = the APDH phases (10k steps each: the paper gives no per-phase lengths), batch 4 per GPU;
  temporal stage: "we solely optimize the Temporal-Attention modules ... with a batch size of 4 for 30,000
  steps", 24 frames, temporal weights initialised "using EchoMimic" (V1's released motion_module file);
  PhD loss with lambda = 0.1 per term and the pose term on the pose encoder's features of x0 and the target.
  Reading taken where the paper is ambiguous: the spatial networks start from SD1.5 image-variations (the
  paper names EchoMimic only for the temporal weights; docs/training.md explains why).
Values the papers do not state (spatial-loss lambda, augmentation probabilities, joint dropout, V2 lr) are
marked "assumed" and are ordinary config values. Memory settings (gradient checkpointing per layer, V2's bf16,
decoder checkpointing and decoded frames) make every preset fit an 80 GB GPU by ``echomimic-train plan``
(docs/training.md section 9; tests/test_trainer_plan.py fails when one does not).
"""
from __future__ import annotations

import copy

from .config import ConfigError

_V1_DATA = {
    "width": 512, "height": 512, "condition": "landmarks",
    "drop_reference": 0.05, "drop_audio": 0.05, "drop_condition": 0.05,
    "drop_all": 0.05,  # assumed: all conditions at once (CFG's unconditional branch), as Hallo's joint 5 %
    "rls": {"enabled": True, "parts": ["eyes", "brows", "pupils", "nose", "mouth"], "drop_prob": 0.5},
    # assumed: the paper says "audio augmentation" without details; the shift stays under a quarter frame so
    # that lip sync is not taught to tolerate a one-frame offset (docs/training.md)
    "audio_aug": {"noise_prob": 0.2, "noise_snr_db": [10.0, 40.0], "gain_prob": 0.2, "gain_db": [-6.0, 6.0],
                  "shift_prob": 0.2, "max_shift_ms": 10.0},
}
_OPTIM = {"lr": 1e-5, "batch_size": 4, "grad_accum": 1, "warmup_steps": 0, "lr_schedule": "constant", "max_grad_norm": 1.0}

PRESETS: dict[str, dict] = {
    "v1_stage1": {
        "model": {"weights": "v1_pose", "init": "sd", "motion_init": "none"},
        "data": _V1_DATA,
        "loss": {"spatial": {"weight": 0.1, "l2": 1.0, "lpips": 1.0}},  # lambda assumed (not in the paper)
        "optim": _OPTIM,
        "phases": [{"name": "stage1", "steps": 30000, "kind": "spatial", "frames": 1,
                    "train": ["reference", "denoiser", "cond_encoder"], "audio": "global"}],
        "checkpoint": {"every": 1000, "keep_last": 3},
        "validation": {"every": 2000},
    },
    "v1_stage2": {
        "model": {"weights": "v1_pose", "init": "echomimic", "motion_init": "animatediff", "gradient_checkpointing": True},
        "data": {**_V1_DATA, "audio_aug": {**_V1_DATA["audio_aug"]}},
        "loss": {"spatial": {"weight": 0.0}},
        "optim": _OPTIM,
        # memory (not in the paper; gradients unchanged): 12 frames x batch 4 keep 141 GiB of activations without
        # checkpointing, 17 GiB with it per layer (`echomimic-train plan`, docs/training.md "Plan")
        "memory": {"checkpointing": "layer"},
        "phases": [{"name": "stage2", "steps": 30000, "kind": "temporal", "frames": 12, "train": ["motion"], "audio": "global"}],
        "checkpoint": {"every": 1000, "keep_last": 3},
        "validation": {"every": 2000},
    },
    "v2_apdh": {
        # spatial init: SD1.5 image-variations (reading taken, see the module docstring); temporal init: EchoMimic's
        # released motion module (model.motion_path: BadToBest/EchoMimic motion_module.pth)
        "model": {"weights": "v2", "init": "sd", "motion_init": "released", "gradient_checkpointing": True},
        # memory, so that phase 4 (batch 4 x 24 frames at 768 px) fits an 80 GB GPU (`echomimic-train plan`): bf16
        # autocast, layer-wise checkpointing of the UNets and of the VAE decoder used by PhD (gradients unchanged), the
        # spatial phases' AdamW state in CPU memory during phase 4 (memory.offload_frozen_optimizer_state, default)
        "mixed_precision": "bf16",
        "memory": {"checkpointing": "layer"},
        "data": {"width": 768, "height": 768, "condition": "pose", "drop_reference": 0.05, "drop_audio": 0.05,
                 "drop_condition": 0.05, "drop_all": 0.05, "rls": {"enabled": False},
                 "audio_aug": {**_V1_DATA["audio_aug"]}},
        # decode_frames: the 24-frame phase decodes 2 frames per clip for PhD (memory, assumed: 4 would need 88 GiB)
        "loss": {"decode_frames": 2, "spatial": {"decoder_checkpointing": True},
                 "phd": {"enabled": True, "bounds": [0.1, 0.6], "pose_weight": 0.1, "detail_weight": 0.1, "low_weight": 0.1,
                         "pose_form": "encoder"}},
        "optim": {**_OPTIM, "batch_size": 4},  # the paper: batch 4 in both stages (lr assumed = V1's)
        "phases": [
            # the pose phases also take fully pose-driven clips (`prepare --kind pose`, the paper's HumanVid)
            {"name": "1", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["body", "head", "lips", "hands"], "pose_dropout": [0.0, 0.0], "audio": "muted", "data": "halfbody+pose"},
            {"name": "2", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["body", "head", "lips", "hands"], "pose_dropout": [0.0, 0.2], "audio": "muted", "data": "halfbody+pose"},
            {"name": "3a", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["body", "head", "hands"], "audio": "lips", "data": "halfbody"},
            {"name": "3b", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["body", "hands"], "audio": "head", "data": "headshot"},
            {"name": "3c", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["body", "hands"], "audio": "head", "data": "halfbody"},
            {"name": "3d", "steps": 10000, "kind": "spatial", "train": ["reference", "denoiser", "cond_encoder"],
             "pose_parts": ["hands"], "audio": "global", "data": "halfbody"},
            {"name": "4", "steps": 30000, "kind": "temporal", "frames": 24, "train": ["motion"],
             "pose_parts": ["hands"], "audio": "global", "data": "halfbody"},
        ],
        "checkpoint": {"every": 1000, "keep_last": 3},
        "validation": {"every": 2000, "frames": 24},
    },
    # LoRA fine-tune of a released (or exported) model for one person: a few minutes of their talking video
    # (docs/training.md, "LoRA fine-tuning"). Not from the papers: rank 16, lr 1e-4, 2000 steps are common LoRA
    # settings for SD1.5 UNets; memory computed by bench/bench_lora_memory.py (V1 512 px batch 4: 5.7 GiB).
    "v1_lora_identity": {
        "model": {"weights": "v1_audio", "init": "echomimic", "motion_init": "released", "gradient_checkpointing": True},
        "data": {**_V1_DATA, "condition": "face_mask", "rls": {"enabled": False}},
        "loss": {"spatial": {"weight": 0.0}},
        "optim": {**_OPTIM, "lr": 1e-4, "batch_size": 4, "warmup_steps": 100},
        "mixed_precision": "bf16",
        "lora": {"enabled": True, "rank": 16, "alpha": 16.0, "networks": ["denoiser"]},
        "phases": [{"name": "lora", "steps": 2000, "kind": "spatial", "frames": 1, "train": ["denoiser"], "audio": "global"}],
        "checkpoint": {"every": 250, "keep_last": 3},
        "validation": {"every": 500},
    },
    # the same for V2 half-body (768 px; batch 2 x 2 accumulation: 6.0 GiB computed)
    "v2_lora_identity": {
        "model": {"weights": "v2", "init": "echomimic", "motion_init": "released", "gradient_checkpointing": True},
        "data": {**_V1_DATA, "width": 768, "height": 768, "condition": "pose", "rls": {"enabled": False}},
        "loss": {"phd": {"enabled": False}},
        "optim": {**_OPTIM, "lr": 1e-4, "batch_size": 2, "grad_accum": 2, "warmup_steps": 100},
        "mixed_precision": "bf16",
        "lora": {"enabled": True, "rank": 16, "alpha": 16.0, "networks": ["denoiser"]},
        "phases": [{"name": "lora", "steps": 2000, "kind": "spatial", "frames": 1, "train": ["denoiser"], "pose_parts": ["hands"],
                    "audio": "global", "data": "all"}],
        "checkpoint": {"every": 250, "keep_last": 3},
        "validation": {"every": 500, "frames": 24},
    },
}


PAPER_PRESETS = ("v1_stage1", "v1_stage2", "v2_apdh")  # the papers' recipes; the *_lora_* presets are not from them


def preset_dict(name: str | None) -> dict:
    if not name:
        return {}
    if name not in PRESETS:
        import difflib

        near = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        did = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"preset: unknown '{name}'{did}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
