"""Configuration of the EchoMimicV3 flash-pro transformer (Wan 2.1 Fun-InP DiT + audio modules).

Defaults are the released model: Wan2.1-Fun-V1.1-1.3B-InP (dim 1536, 30 layers, 12 heads, 36 input
channels = 16 noise + 4 mask + 16 reference latents) and the flash-pro audio projector (12 wav2vec2 layers
of 768 channels, 5-frame windows, 32 tokens of 1536 per latent frame). Every dimension is a field, so
tiny test models need no surgery. The official code hard-codes the audio projector and the CLIP width /
token count; :meth:`WanV3Config.from_official` reads the base ``config.json`` (original Wan keys) and
:meth:`AudioProjConfig.from_state_dict` recovers the projector's sizes from its weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class AudioProjConfig:
    """MultiTalk-style audio projector (official ``AudioProjModel`` arguments)."""

    seq_len: int = 5  # window of the first latent frame (video frames -2..+2)
    seq_len_vf: int = 8  # entries of a later latent frame: 3 + 1 + 1 + 3 (see audio_proj.group_windows)
    blocks: int = 12  # wav2vec2 layers stacked
    channels: int = 768  # wav2vec2 hidden size
    intermediate_dim: int = 512
    output_dim: int = 1536  # = transformer dim
    context_tokens: int = 32  # audio tokens per latent frame
    norm_output: bool = True

    @classmethod
    def from_state_dict(cls, sd: dict, prefix: str = "audio_injection.", blocks: int | None = None,
                        seq_len: int = 5, seq_len_vf: int = 8) -> "AudioProjConfig":
        """Sizes from the projector weights. Only ``blocks * channels`` is fixed by the weights (the windows
        are flattened); ``blocks`` (default 12, or the largest divisor that fits) splits it."""
        w1 = sd[prefix + "proj1.weight"]
        inter, flat = int(w1.shape[0]), int(w1.shape[1])
        if flat % seq_len:
            raise ValueError(f"{prefix}proj1.weight has {flat} inputs, not a multiple of the window {seq_len}")
        per_frame = flat // seq_len
        if blocks is None:
            blocks = 12 if per_frame % 12 == 0 else 1
        out_dim = int(sd[prefix + "norm.weight"].shape[0]) if prefix + "norm.weight" in sd else None
        proj3 = int(sd[prefix + "proj3.weight"].shape[0])
        if out_dim is None:
            raise ValueError(f"{prefix}norm.weight missing: cannot tell the projector's output width")
        return cls(seq_len=seq_len, seq_len_vf=seq_len_vf, blocks=blocks, channels=per_frame // blocks,
                   intermediate_dim=inter, output_dim=out_dim, context_tokens=proj3 // out_dim, norm_output=True)


@dataclass(frozen=True)
class WanV3Config:
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 36
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    clip_dim: int = 1280  # hard-coded in the official MLPProj
    clip_tokens: int = 257  # hard-coded split context[:, :257]
    vae_scale: int = 4  # video frames per latent frame (after the first)
    audio: AudioProjConfig = field(default_factory=AudioProjConfig)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_official(cls, config: dict, audio: AudioProjConfig | None = None) -> "WanV3Config":
        """From the base model's ``config.json`` (original Wan keys: dim, ffn_dim, num_heads, in_dim, ...).
        Keys it omits take the official class defaults (e.g. the real file has no ``text_dim``: 4096)."""
        if config.get("model_type", "i2v") != "i2v":
            raise ValueError(f"EchoMimicV3 needs the image-to-video (i2v) Wan model, config says {config.get('model_type')!r}")
        kw = {}
        for key in ("dim", "ffn_dim", "freq_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len", "eps"):
            if key in config:
                kw[key] = type(getattr(cls(), key))(config[key])
        if "patch_size" in config:
            kw["patch_size"] = tuple(int(p) for p in config["patch_size"])
        for key in ("qk_norm", "cross_attn_norm"):
            if key in config:
                kw[key] = bool(config[key])
        cfg = cls(**kw)
        audio = audio or replace(AudioProjConfig(), output_dim=cfg.dim)
        return replace(cfg, audio=audio)
