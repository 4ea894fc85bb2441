"""Typed training configuration: the dataclasses of a run and the checks of their fields.

A run is described by one :class:`TrainConfig`. YAML files give a subset of its fields, optionally on top
of a preset (``preset: v1_stage1``); every unknown key is an error that names its path (``optim.lrr``), and
every value is checked against the field's type (reading and writing: :mod:`trainer.config_file`). The
resolved config is written next to the checkpoints.

Training is a list of *phases* (:class:`PhaseConfig`): V1 stage 1 and stage 2 are one phase each, V2's
APDH schedule is seven phases (see :mod:`trainer.phases` and :mod:`trainer.presets`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration file or override is invalid (unknown key, wrong type, bad value)."""


@dataclass
class ModelConfig:
    weights: str = "v1_pose"  # official file set trained and exported: v1_audio | v1_pose | v2
    init: str = "sd"  # sd (SD1.5 image-variations UNet) | echomimic (released weights or an export) | random
    sd_path: str | None = None  # sd-image-variations-diffusers folder (with unet/)
    echomimic_path: str | None = None  # released EchoMimic folder, or an `echomimic-train export` folder
    variant: str = "normal"  # normal | acc (which released denoiser/motion files to start from)
    motion_init: str = "random"  # random (proj_out zero) | released | animatediff | none (stage-1-only model)
    # motion_init animatediff: the mm_sd_v15_v2 file; released: a released EchoMimic motion_module file
    # (default with init: echomimic: the one in echomimic_path)
    motion_path: str | None = None
    vae_path: str | None = None  # sd-vae-ft-mse folder; default: found beside echomimic_path / sd_path
    whisper_path: str | None = None  # whisper tiny checkpoint; default: found beside echomimic_path / sd_path
    arch: str | None = None  # "tiny" | "sd15" for init: random; otherwise read from the init folder
    gradient_checkpointing: bool = False  # reference + denoising UNet
    attention: str = "sdpa"


@dataclass
class RLSConfig:
    """Random Landmark Selection: each sample drops every part independently with ``drop_prob``."""

    enabled: bool = True
    parts: list[str] = field(default_factory=lambda: ["eyes", "brows", "pupils", "nose", "mouth"])
    drop_prob: float = 0.5


@dataclass
class AudioAugConfig:
    """Waveform augmentation before whisper feature extraction (each with its own probability)."""

    noise_prob: float = 0.0
    noise_snr_db: list[float] = field(default_factory=lambda: [10.0, 40.0])
    gain_prob: float = 0.0
    gain_db: list[float] = field(default_factory=lambda: [-6.0, 6.0])
    shift_prob: float = 0.0
    # one video frame is 40-42 ms: a larger shift teaches the model that audio one frame early or late is
    # still in sync (docs/training.md, "Audio augmentation"); 10 ms stays inside one whisper row (20 ms)
    max_shift_ms: float = 10.0


@dataclass
class DataConfig:
    roots: list[str] = field(default_factory=list)  # prepared datasets (V1: headshots; V2: half-body)
    headshot_roots: list[str] = field(default_factory=list)  # V2: headshot datasets, padded into the half-body layout
    width: int = 512
    height: int = 512
    condition: str = "landmarks"  # landmarks (V1 pose set) | face_mask (V1 audio set) | pose (V2)
    landmark_parts: list[str] = field(default_factory=lambda: ["eyes", "brows", "pupils", "nose", "mouth"])
    # clips held out for validation, by identity group (trainer/data/split.py); None: one group when validation is on
    val_clips: int | None = None
    ref_min_gap: int = 8  # frames between the reference and every target frame (at least; 0: any frame, the target too)
    drop_reference: float = 0.05
    drop_audio: float = 0.05
    drop_condition: float = 0.05
    # all three dropped at once: the sampler's CFG unconditional branch (independent 5 % drops alone give
    # it 0.0125 % of the samples); drawn first, the independent drops apply to the other samples
    drop_all: float = 0.05
    rls: RLSConfig = field(default_factory=RLSConfig)
    audio_aug: AudioAugConfig = field(default_factory=AudioAugConfig)
    num_workers: int = 2
    # VAE latents cached per clip at the run's resolution (trainer/data/latent_cache.py): written at the start of the
    # run when missing (or by `prepare --cache-latents`), then the VAE encodes no training frame
    cache_latents: bool = False
    # V2 headshot padding: where half-body heads are (face box centre x, y and height, canvas fractions)
    head_box: list[float] = field(default_factory=lambda: [0.5, 0.23, 0.18])


@dataclass
class NoiseConfig:
    """The training noise schedule (:func:`trainer.losses.training_scheduler`). The default is the one the code
    lineage of the released weights trains with (scaled_linear betas, zero terminal SNR, v-prediction), while the
    sampler uses linear betas: docs/training.md, "Noise schedule"."""

    beta_schedule: str = "scaled_linear"  # scaled_linear (lineage's training) | linear (the sampler's)
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    rescale_betas_zero_snr: bool = True
    prediction_type: str = "v_prediction"  # the sampler and the released weights predict v; nothing else is trained


@dataclass
class LPIPSConfig:
    net: str = "alex"  # alex | vgg | squeeze
    random_backbone: bool = False  # pnet_rand: tests only (no ImageNet weights needed)
    # torchvision ImageNet weights of the backbone (e.g. alexnet-owt-7be5be79.pth); default: torch hub's cache
    # (~/.cache/torch/hub/checkpoints), downloaded there when missing
    backbone_path: str | None = None


@dataclass
class SpatialLossConfig:
    """V1 timestep-aware spatial loss: weight * w(t) * [l2 * L2 + lpips * LPIPS] on the one-step x0 decode."""

    weight: float = 0.0  # lambda; 0 = off
    l2: float = 1.0
    lpips: float = 1.0
    face_crop: bool = False  # decode only a face-centred crop of the latent
    crop_size: int = 256  # pixels (multiple of 8), clamped to the image
    decoder_checkpointing: bool = False


@dataclass
class EdgeConfig:
    """Differentiable Canny: thresholds on the Sobel/8 gradient magnitude of the [0, 1] grey image."""

    blur_sigma: float = 1.0
    low: float = 0.05
    high: float = 0.1
    softness: float = 0.02
    thinning: float = 20.0


@dataclass
class PhDConfig:
    """V2 phase-specific denoising loss (see :mod:`trainer.losses`)."""

    enabled: bool = False
    bounds: list[float] = field(default_factory=lambda: [0.1, 0.6])  # fractions of denoising in S1, S2; S3 = rest
    pose_weight: float = 0.1
    detail_weight: float = 0.1
    low_weight: float = 0.1
    # S1's E_P: "encoder" = the paper's form, features of the model's own pose encoder for both images;
    # "heatmap" = the images weighted by Gaussians at the target's keypoints (see trainer/phd.py)
    pose_form: str = "encoder"
    pose_sigma: float = 0.015  # heatmap form: keypoint heat-map sigma, fraction of the image size
    pose_estimator: str | None = None  # "module:callable" differentiable keypoint estimator (replaces either form)
    edge: EdgeConfig = field(default_factory=EdgeConfig)


@dataclass
class LossConfig:
    decode_frames: int = 0  # frames per sample decoded for the spatial / PhD terms (evenly spaced); 0 = all
    spatial: SpatialLossConfig = field(default_factory=SpatialLossConfig)
    phd: PhDConfig = field(default_factory=PhDConfig)
    lpips: LPIPSConfig = field(default_factory=LPIPSConfig)


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes)
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    lr_schedule: str = "constant"  # any diffusers.optimization scheduler name (constant, linear, cosine, ...)
    warmup_steps: int = 0
    batch_size: int = 4  # per process
    grad_accum: int = 1


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.9999


@dataclass
class PhaseConfig:
    """One training phase. ``kind`` spatial = single frames, no motion modules; temporal = clips, motion only."""

    name: str = "stage1"
    steps: int = 30000
    kind: str = "spatial"  # spatial | temporal
    frames: int = 1
    train: list[str] = field(default_factory=lambda: ["reference", "denoiser", "cond_encoder"])  # or ["motion"]
    data: str = "all"  # all | halfbody | headshot | pose, or several joined by "+" (e.g. halfbody+pose)
    pose_parts: list[str] = field(default_factory=lambda: ["hands"])  # V2 keypoint groups drawn: body, head, lips, hands
    pose_dropout: list[float] = field(default_factory=lambda: [0.0, 0.0])  # whole-pose dropout, ramped start -> end
    audio: str = "global"  # global | muted | lips | head   (audio cross-attention mask)


LORA_NETWORKS = ("denoiser", "reference", "motion")  # what lora.networks may name


@dataclass
class LoraTrainConfig:
    """LoRA fine-tuning (:mod:`trainer.lora`): peft adapters on the base model of ``model.echomimic_path``."""

    enabled: bool = False
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])  # linear-layer name suffixes
    networks: list[str] = field(default_factory=lambda: ["denoiser"])  # denoiser | reference | motion


@dataclass
class CheckpointConfig:
    every: int = 1000
    keep_last: int = 3


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    plot: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    every: int = 0  # steps; 0 = off
    steps: int = 10  # denoising steps
    frames: int = 12
    cfg: float = 2.5
    clip: str | None = None  # clip id (default: the first clip of the first dataset)
    seed: int = 420


# --- #26 memory plan and multi-GPU / multi-node settings (trainer/plan, trainer/distributed.py) ---------------
@dataclass
class MemoryConfig:
    checkpointing: str = "block"  # granularity of model.gradient_checkpointing: block | layer (trainer/plan/checkpointing.py)
    offload_frozen_optimizer_state: bool = True  # AdamW state of parameters the current phase freezes waits in CPU memory
    gpu_gib: float = 80.0  # memory per GPU that `echomimic-train plan` checks the run against

    def __post_init__(self):
        if self.checkpointing not in ("block", "layer"):
            raise ConfigError(f"memory.checkpointing: '{self.checkpointing}' is not one of block, layer")


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp | fsdp (accelerate's FullyShardedDataParallelPlugin: whole-UNet phases, sharded checkpoints)
    timeout_s: float = 1800.0  # collective timeout of the process group (accelerate InitProcessGroupKwargs)
    # output_dir across nodes: check = every rank writes a token and the run stops unless all see each other's
    # (not shared: set local); local = each node keeps its own checkpoints (rank 0's metadata copied to every node)
    shared_fs: str = "check"
    validation_timeout_s: float = 900.0  # rank 0 renders validation alone; the others wait at most this long

    def __post_init__(self):
        if self.strategy not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed.strategy: '{self.strategy}' is not one of ddp, fsdp")
        if self.shared_fs not in ("check", "local"):
            raise ConfigError(f"distributed.shared_fs: '{self.shared_fs}' is not one of check, local")
        if self.strategy == "fsdp" and self.shared_fs == "local":
            raise ConfigError("distributed: FSDP's sharded checkpoints need one output_dir that every node sees (each "
                              "rank reads others' shards on resume): use shared_fs: check with a shared folder, or strategy: ddp")
        if not self.validation_timeout_s < self.timeout_s:
            raise ConfigError("distributed.validation_timeout_s must be below distributed.timeout_s (the ranks waiting for "
                              "rank 0's validation would hit the collective timeout first): raise timeout_s")


@dataclass
class TrainConfig:
    preset: str | None = None
    output_dir: str = "runs/echomimic"
    seed: int = 42
    mixed_precision: str = "no"  # no | bf16 | fp16
    frozen_dtype: str = "auto"  # dtype of the frozen VAE / whisper: auto (= mixed precision) | float32
    cpu_threads: int | None = None
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    ddp_find_unused: bool = False
    noise: NoiseConfig = field(default_factory=NoiseConfig)  # the training noise schedule
    noise_scheduler: dict = field(default_factory=dict)  # further DDIM keyword arguments of the training schedule
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)  # #26
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # #26

    @property
    def max_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self, files: bool = True) -> "TrainConfig":
        """The checks of single fields, of fields against each other and of a LoRA run;
        :func:`trainer.config_file.validate` adds the phase schedule's. ``files=False`` (``echomimic-train plan``, which
        reads no weights) leaves out only the checks that the run's model files are named."""
        choices = {
            "model.weights": (self.model.weights, ("v1_audio", "v1_pose", "v2")),
            "model.init": (self.model.init, ("sd", "echomimic", "random")),
            "model.motion_init": (self.model.motion_init, ("random", "released", "animatediff", "none")),
            "model.variant": (self.model.variant, ("normal", "acc")),
            "data.condition": (self.data.condition, ("landmarks", "face_mask", "pose")),
            "mixed_precision": (self.mixed_precision, ("no", "bf16", "fp16")),
            "frozen_dtype": (self.frozen_dtype, ("auto", "float32")),
            "optim.optimizer": (self.optim.optimizer, ("adamw", "adamw8bit")),
            "loss.phd.pose_form": (self.loss.phd.pose_form, ("encoder", "heatmap")),
            "loss.lpips.net": (self.loss.lpips.net, ("alex", "vgg", "squeeze")),
        }
        for path, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigError(f"{path}: '{value}' is not one of {', '.join(allowed)}")
        need = {"sd": "sd_path", "echomimic": "echomimic_path"}.get(self.model.init) if files else None
        if need and not getattr(self.model, need):
            raise ConfigError(f"model.init: {self.model.init} needs model.{need}" + (
                " (the Stable Diffusion 1.5 folder), or set model.init: echomimic with model.echomimic_path: FOLDER "
                "(a released EchoMimic model, or `echomimic make-tiny`'s)" if need == "sd_path" else " (a released EchoMimic "
                "model folder, or `echomimic make-tiny`'s)"))
        if files and self.model.motion_init == "animatediff" and not self.model.motion_path:
            raise ConfigError("model.motion_init: animatediff needs model.motion_path (mm_sd_v15_v2 file)")
        if files and self.model.motion_init == "released" and self.model.init != "echomimic" and not self.model.motion_path:
            raise ConfigError("model.motion_init: released needs model.motion_path (a released EchoMimic motion_module.pth) "
                              "unless model.init is echomimic (then the folder's motion module is used)")
        cond_of = {"v1_audio": "face_mask", "v1_pose": "landmarks", "v2": "pose"}
        if cond_of[self.model.weights] != self.data.condition:
            raise ConfigError(f"data.condition: the {self.model.weights} weight set is trained with '{cond_of[self.model.weights]}' "
                              f"conditions, not '{self.data.condition}'")
        if self.data.width % 8 or self.data.height % 8:
            raise ConfigError("data.width/height must be multiples of 8")
        for name in ("drop_reference", "drop_audio", "drop_condition", "drop_all"):
            if not 0.0 <= getattr(self.data, name) <= 1.0:
                raise ConfigError(f"data.{name} must be a probability in [0, 1]")
        if self.optim.batch_size < 1 or self.optim.grad_accum < 1:
            raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
        b = self.loss.phd.bounds
        if len(b) != 2 or b[0] < 0 or b[1] < 0 or b[0] + b[1] > 1:
            raise ConfigError("loss.phd.bounds must be two fractions [S1, S2] with S1 + S2 <= 1")
        _validate_lora(self)
        _validate_noise(self)
        return self


NOISE_SCHEDULES = ("scaled_linear", "linear")


def _validate_noise(cfg: TrainConfig) -> None:
    """The training noise schedule's checks, part of :meth:`TrainConfig.validate`."""
    n = cfg.noise
    if n.beta_schedule not in NOISE_SCHEDULES:
        raise ConfigError(f"noise.beta_schedule: '{n.beta_schedule}' is not one of {', '.join(NOISE_SCHEDULES)}; use scaled_linear "
                          "(what the released weights' lineage trains with, the default) or linear (the sampler's schedule)")
    if not 0.0 < n.beta_start < n.beta_end < 1.0:
        raise ConfigError(f"noise.beta_start/beta_end: {n.beta_start}, {n.beta_end} must satisfy 0 < beta_start < beta_end < 1 "
                          "(EchoMimic: 0.00085 and 0.012)")
    if n.num_train_timesteps < 2:
        raise ConfigError(f"noise.num_train_timesteps: {n.num_train_timesteps} must be at least 2 (EchoMimic: 1000)")
    if n.prediction_type != "v_prediction":
        raise ConfigError(f"noise.prediction_type: '{n.prediction_type}' cannot be trained here: the released weights and the "
                          "pack's sampler predict v (and epsilon is undefined at the zero-SNR last step); set v_prediction")
    clash = sorted(set(cfg.noise_scheduler) & {f.name for f in dataclasses.fields(NoiseConfig)})
    if clash:
        raise ConfigError(f"noise_scheduler.{clash[0]}: set it as noise.{clash[0]} (the training schedule's own section)")


def check_lora_alpha(alpha: float, rank: int, use_rslora: bool = False) -> None:
    """``lora.alpha`` whose scale (alpha / rank; rsLoRA: alpha / sqrt(rank)) no reader takes (past fp16's largest number,
    :data:`echomimic_lib.lora.files.MAX_LORA_SCALE`): refused before anything is built (1e38 trained NaN losses)."""
    import math

    from echomimic_lib.lora.files import MAX_LORA_SCALE

    scale = alpha / (math.sqrt(rank) if use_rslora else rank)
    if not scale <= MAX_LORA_SCALE:
        raise ConfigError(f"lora.alpha: {alpha:g} at lora.rank {rank} gives a LoRA scale of {scale:g}, past {MAX_LORA_SCALE:g} "
                          "(fp16's largest number): the adapters' output would overflow to NaN. Use an ordinary alpha, e.g. "
                          f"lora.alpha: {rank} (= lora.rank) or {2 * rank}.")


def _validate_lora(cfg: TrainConfig) -> None:
    """The checks of a LoRA run (:mod:`trainer.lora`), part of :meth:`TrainConfig.validate`."""
    lc = cfg.lora
    if not lc.enabled:
        return
    if lc.rank < 1 or not lc.alpha > 0 or not 0.0 <= lc.dropout < 1.0:
        raise ConfigError("lora: rank must be >= 1, alpha > 0 and dropout in [0, 1)")
    check_lora_alpha(lc.alpha, lc.rank, lc.use_rslora)
    bad = [n for n in lc.networks if n not in LORA_NETWORKS]
    if bad or not lc.networks:
        raise ConfigError(f"lora.networks: choose from {', '.join(LORA_NETWORKS)} (got {lc.networks})")
    if not lc.targets:
        raise ConfigError("lora.targets: name at least one layer (default to_q, to_k, to_v, to_out.0)")
    if cfg.model.init != "echomimic":
        raise ConfigError("lora: adapters are trained on top of a released or exported EchoMimic model: set model.init: echomimic "
                          "and model.echomimic_path: FOLDER")
    if cfg.model.motion_init != "released":
        raise ConfigError("lora: the base model keeps its own motion modules: set model.motion_init: released")
    groups = {"denoiser": {"denoiser", "audio"}, "reference": {"reference"}, "motion": {"motion"}}
    for p in cfg.phases:
        active = {n for n in lc.networks if n != "motion" or p.kind == "temporal"}
        if not any(set(p.train) & groups[n] for n in active):
            raise ConfigError(f"phases.{p.name}: no LoRA adapter trains in this phase (train {p.train}, lora.networks {lc.networks}"
                              f"{'; motion modules only run in temporal phases' if 'motion' in lc.networks else ''})")
