"""Host memory (RAM) of a video held whole: the ComfyUI sampler nodes that return an IMAGE batch keep every frame as
float32 (frames x height x width x 3 x 4 bytes); a clip that cannot fit is refused before any sampling, with the
streaming alternative named by the caller."""
from __future__ import annotations

from ..errors import EchoMimicError


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def frames_bytes(frames: int, height: int, width: int) -> int:
    """Bytes of ``frames`` RGB float32 frames of ``height`` x ``width`` (ComfyUI's IMAGE)."""
    return int(frames) * int(height) * int(width) * 3 * 4


def available_bytes() -> int | None:
    """The host memory available now (psutil's ``virtual_memory().available``), or None without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_frames_fit(frames: int, height: int, width: int, fix: str, working: int = 0) -> None:
    """Refuse a video whose frames (float32) need more than the available host memory; ``fix``: what to use instead
    (the streaming variant); ``working``: bytes held besides them while the frames are made (EchoMimicV3: the chunk
    being decoded, :func:`echomimic_lib.pipeline.wan.memory.chunk_host_bytes`; V1/V2: the decode's,
    :func:`echomimic_lib.pipeline.decode.host_bytes`). Nothing is checked where the
    available memory is unknown (no psutil)."""
    need, free = frames_bytes(frames, height, width) + int(working), available_bytes()
    if free is None or need <= free:
        return
    also = " and the chunk being decoded" if working else ""
    raise EchoMimicError(f"{frames} frames at {width}x{height} need about {_size(need)} of host memory as one IMAGE "
                         f"batch (float32){also}, more than the {_size(free)} available. Use {fix}, which writes the video "
                         "to an mp4 as it is made (memory stays flat), or make it shorter (length) or smaller.")
