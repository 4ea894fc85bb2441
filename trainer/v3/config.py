"""An EchoMimicV3 flash-pro LoRA run's settings (``echomimic-train v3-fit --config run.yaml``) and their checks.

Read strictly with the V1/V2 trainer's reader (:func:`trainer.config_file.from_dict`: an unknown key names the closest
known one, values are type-checked), ``--set key=value`` overrides as there. What is assumed rather than published
(the official repository ships no training code) is said in ``docs/training.md`` ("EchoMimicV3 LoRA").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError, check_lora_alpha

# every nn.Linear of a block: attention projections (self, text, image, audio) and the feed-forward layers
ALL_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
               "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "cross_attn.k_audio", "cross_attn.v_audio", "ffn.0", "ffn.2")
DEFAULT_TARGETS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k", "cross_attn.v",
                   "cross_attn.o", "cross_attn.k_audio", "cross_attn.v_audio", "ffn.0", "ffn.2"]
WEIGHTINGS = ("none", "logit_normal", "mode", "cosmap")  # diffusers.training_utils.compute_density_for_timestep_sampling
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class V3Model:
    path: str = ""  # the v3-flash folder, as `echomimic animate --version v3-flash --models DIR` reads DIR/v3-flash


@dataclass
class V3Data:
    roots: list[str] = field(default_factory=list)  # folders written by `echomimic-train prepare ... --fps 25`
    frames: int = 49           # video frames per sample, 4k+1 (the release renders 81)
    width: int = 512           # multiples of 16
    height: int = 512
    stride: int = 0            # frames between sample windows of a clip (0: = frames, no overlap)
    prompt: str = "A person is speaking."  # every clip's caption unless `captions` names one
    captions: str | None = None  # JSON file {clip id: caption}
    audio_drop: float = 0.1    # share of samples trained with silent (zero) audio: keeps audio CFG's unconditional pass
    cache_dir: str | None = None  # encoded samples (default <output_dir>/encoded)


@dataclass
class V3Lora:
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    fp32_inputs: bool = True  # peft's default: each adapter casts its input to float32 (under bf16 autocast the backward
    #                           then keeps one more bf16 copy of it); false: the adapters compute in the autocast dtype


@dataclass
class V3Noise:
    shift: float = 5.0         # the sampler's flow shift (Flow-UniPC, shift 5)
    weighting: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29


@dataclass
class V3Optim:
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_steps: int = 0


@dataclass
class V3Checkpoint:
    every: int = 250
    keep_last: int = 3


@dataclass
class V3Validation:
    reference: str | None = None  # an image; none: no validation clips
    audio: str | None = None      # speech (wav, mp3, ... or a video with sound)
    prompt: str | None = None     # default data.prompt
    frames: int = 0               # 4k+1; 0: data.frames
    steps: int = 8
    audio_cfg: float = 3.0
    seed: int = 43

    def check(self) -> None:
        if bool(self.reference) != bool(self.audio):
            raise ConfigError("validation: give both reference and audio (or neither: no validation clips)")
        if self.frames and (self.frames < 5 or (self.frames - 1) % 4):
            raise ConfigError(f"validation.frames {self.frames}: 4k+1, at least 5 (0: data.frames)")
        if not 1 <= self.steps <= 200:
            raise ConfigError(f"validation.steps {self.steps}: 1..200")


@dataclass
class V3Distributed:
    """Several processes (``accelerate launch --multi_gpu``): how long they wait for each other (as §10's keys)."""
    timeout_s: float = 1800.0  # collective timeout of the process group: covers rank 0 encoding the prompts with umT5
    validation_timeout_s: float = 900.0  # rank 0 renders the validation clip alone; the others wait at most this long

    def check(self) -> None:
        if not (self.timeout_s > 0 and self.validation_timeout_s > 0):
            raise ConfigError("distributed.timeout_s and distributed.validation_timeout_s must be > 0 (seconds)")
        if not self.validation_timeout_s < self.timeout_s:
            raise ConfigError("distributed.validation_timeout_s must be below distributed.timeout_s (the ranks waiting for "
                              "rank 0's validation would hit the collective timeout first): raise timeout_s")


@dataclass
class V3TrainConfig:
    output_dir: str = ""
    model: V3Model = field(default_factory=V3Model)
    data: V3Data = field(default_factory=V3Data)
    lora: V3Lora = field(default_factory=V3Lora)
    noise: V3Noise = field(default_factory=V3Noise)
    optim: V3Optim = field(default_factory=V3Optim)
    checkpoint: V3Checkpoint = field(default_factory=V3Checkpoint)
    validation: V3Validation = field(default_factory=V3Validation)  # a clip rendered at each checkpoint (.validation)
    distributed: V3Distributed = field(default_factory=V3Distributed)
    steps: int = 1000
    seed: int = 0
    mixed_precision: str = "bf16"  # "no" (float32 everywhere: the CPU), "bf16", "fp16"
    gradient_checkpointing: bool = True
    log_every: int = 10

    def validate(self) -> "V3TrainConfig":
        d, lo, o, n = self.data, self.lora, self.optim, self.noise
        from ..config_checks import check_finite, check_lr

        check_finite(self)  # (optim.lr: .nan, .inf or 5 was trained with: NaN weights from the first step)
        check_lr(o.lr, "the V3 default is 1e-4")
        need = [("output_dir", self.output_dir), ("model.path", self.model.path)]
        for key, value in need:
            if not value:
                raise ConfigError(f"{key}: required (e.g. {'runs/my_v3_lora' if key == 'output_dir' else 'models/v3-flash'})")
        if not d.roots:
            raise ConfigError("data.roots: give at least one folder prepared with `echomimic-train prepare VIDEOS DATA --fps 25`")
        if d.frames < 5 or (d.frames - 1) % 4:
            raise ConfigError(f"data.frames {d.frames}: EchoMimicV3 takes 4k+1 frames, at least 5 (e.g. 49 or 81)")
        for key, v in (("data.width", d.width), ("data.height", d.height)):
            if v < 16 or v % 16:
                raise ConfigError(f"{key} {v}: a positive multiple of 16 (e.g. 512 or 768)")
        if d.stride < 0:
            raise ConfigError(f"data.stride {d.stride}: 0 (= data.frames) or more")
        if not 0.0 <= d.audio_drop < 1.0:
            raise ConfigError(f"data.audio_drop {d.audio_drop}: a share in [0, 1)")
        if lo.rank < 1 or lo.alpha <= 0 or not 0.0 <= lo.dropout < 1.0:
            raise ConfigError(f"lora: rank >= 1, alpha > 0, dropout in [0, 1) (got {lo.rank}, {lo.alpha}, {lo.dropout})")
        check_lora_alpha(lo.alpha, lo.rank)
        bad = [t for t in lo.targets if t not in ALL_TARGETS]
        if bad or not lo.targets:
            raise ConfigError(f"lora.targets {bad or lo.targets}: choose from {', '.join(ALL_TARGETS)}")
        if n.weighting not in WEIGHTINGS:
            raise ConfigError(f"noise.weighting {n.weighting!r}: one of {', '.join(WEIGHTINGS)}")
        if n.shift <= 0 or n.logit_std <= 0:
            raise ConfigError("noise.shift and noise.logit_std must be > 0")
        if o.lr <= 0 or o.batch_size < 1 or o.grad_accum < 1 or o.max_grad_norm < 0 or o.warmup_steps < 0:
            raise ConfigError("optim: lr > 0, batch_size >= 1, grad_accum >= 1, max_grad_norm >= 0 (0: no clipping), warmup_steps >= 0")
        if self.steps < 1 or self.checkpoint.every < 1 or self.log_every < 1:
            raise ConfigError("steps, checkpoint.every and log_every must be >= 1")
        from ..config_checks import check_keep_last

        check_keep_last(self.checkpoint.keep_last, self.steps, self.checkpoint.every)
        self.validation.check()
        self.distributed.check()
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"mixed_precision {self.mixed_precision!r}: one of {', '.join(PRECISIONS)}")
        return self


def load_v3_config(path=None, overrides: list[str] | None = None) -> V3TrainConfig:
    """The YAML file (optional) with ``--set`` overrides, read strictly and checked."""
    from ..config_checks import read_yaml_mapping
    from ..config_file import apply_override

    data = read_yaml_mapping(path) if path else {}
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    return v3_config_from(data)


def v3_config_from(data: dict) -> V3TrainConfig:
    """A config mapping (the YAML's, overrides applied) read strictly and checked."""
    from ..config_file import from_dict

    if data.get("mixed_precision") is False:  # YAML reads a bare `no` as false
        data = {**data, "mixed_precision": "no"}
    return from_dict(V3TrainConfig, data).validate()
