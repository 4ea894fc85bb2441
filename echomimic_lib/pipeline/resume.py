"""Resumable renders: the denoising loop's state kept on disk, so a long render that dies goes on where it stopped.

A V1/V2 render spends nearly all its time in the denoising loop, and every step moves the whole clip's latents
at once (the context windows are averaged over the clip). After step ``i`` the loop's whole state is those
latents: the scheduler (DDIM, eta 0) holds nothing between steps, the windows of step ``i + 1`` follow from its
index and the audio, condition and reference are computed again from the same inputs. So the latents after a
step, with its index, are enough to finish the render as if it had never stopped: the same frames, bit for bit on
the same machine (``tests/test_resume.py``).

:class:`StepCheckpoint` writes them (safetensors: the latents, the step and a fingerprint of the request) at most
every ``every_s`` seconds, after the last step, and when the loop is interrupted (Ctrl-C, SIGTERM from a job
scheduler, an error): a render stopped at step 27 of 30 starts again at step 28. A file whose fingerprint differs
(another request wrote it) is not used. The file is written whole or not at all and removed after a successful
render. DeepCache keeps features between steps that the file does not hold, so it is not resumable.
"""
from __future__ import annotations

import logging
import stat
import time
from pathlib import Path

import torch

from ..errors import EchoMimicError
from ..io.file_safety import publish, regular_target, temp_beside

log = logging.getLogger(__name__)

FORMAT = "echomimic-resume-1"
EVERY_S = 120.0  # write at most this often while the loop runs (a 5-minute 768 px clip's latents are about 1 GB)
MAX_AGE_S = 7 * 24 * 3600.0  # prune_states: a state nobody went on with for this long is removed


def state_path(output: str | Path) -> Path:
    """Where a render of ``output`` keeps its state: beside it, ``<name>.resume``."""
    output = Path(output)
    return output.with_name(output.name + ".resume")


class StepCheckpoint:
    """The sampler's hooks for a resumable render of one request (``fingerprint``: a digest of everything that
    shapes the output, :func:`echomimic_lib.jobs.resume_plan.fingerprint`)."""

    def __init__(self, path: str | Path, fingerprint: str, every_s: float = EVERY_S):
        self.path, self.fingerprint, self.every_s = Path(path), str(fingerprint), float(every_s)
        regular_target(self.path)  # a folder, device or pipe there is refused before any work
        self.saved_step, self.resumed_from = -1, None
        self.failed_writes = 0
        self._last_write = time.monotonic()

    def load(self, shape: tuple[int, ...]) -> tuple[int, torch.Tensor] | None:
        """(last finished step, latents) from an earlier run of this request, or None (no file, or another request's)."""
        if not self.path.exists():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
                    log.warning("%s holds the state of another render (different inputs or settings); starting from "
                                "the first step (it is replaced at the first save)", self.path)
                    return None
                latents, step = f.get_tensor("latents"), int(meta["step"])
        except Exception as exc:  # a cut-off or foreign file: never trusted, never fatal
            log.warning("%s cannot be read (%s); starting from the first step", self.path, exc)
            return None
        if tuple(latents.shape) != tuple(shape) or step < 0:
            log.warning("%s does not fit this render (latents %s, expected %s); starting from the first step",
                        self.path, tuple(latents.shape), tuple(shape))
            return None
        self.saved_step = self.resumed_from = step
        log.info("resuming from %s: steps 1..%d are done", self.path, step + 1)
        return step, latents.to(torch.float32)

    def after_step(self, step: int, latents: torch.Tensor, last: bool) -> None:
        """Called after every step; writes when it is the last one or ``every_s`` has passed since the last write.

        A write that fails (a full disk, a folder made read-only) never stops the render: the state is a spare, the
        video is the work. It is said once, with the reason, and tried again after ``every_s``."""
        if last or time.monotonic() - self._last_write >= self.every_s:
            try:
                self.save(step, latents)
            except Exception as exc:
                self._last_write = time.monotonic()
                self.failed_writes += 1
                if self.failed_writes == 1:
                    log.warning("could not keep the render's state in %s (%s); the render goes on, but if it stops "
                                "now it starts again from the first kept step (%s)", self.path, exc,
                                "none" if self.saved_step < 0 else f"step {self.saved_step + 1}")

    def interrupted(self, step: int, latents: torch.Tensor) -> None:
        """The loop stopped after finishing ``step``: keep it, unless it is on disk already."""
        if step > self.saved_step:
            try:
                self.save(step, latents)
                log.warning("render interrupted after step %d; run the same command again to go on from there (%s)",
                            step + 1, self.path)
            except Exception as exc:  # the interruption is what the user must see; this is a note beside it
                log.warning("could not keep the render's state in %s: %s", self.path, exc)

    def save(self, step: int, latents: torch.Tensor) -> None:
        from safetensors.torch import save_file

        tmp = temp_beside(self.path)
        try:
            save_file({"latents": latents.detach().to("cpu", torch.float32).contiguous()}, str(tmp),
                      metadata={"format": FORMAT, "fingerprint": self.fingerprint, "step": str(int(step))})
            publish(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self.saved_step, self._last_write = int(step), time.monotonic()

    def discard(self) -> None:
        """The render is complete: its state is not needed any more."""
        self.path.unlink(missing_ok=True)


def check_resumable(deep_cache: int, option: str = "--resumable",
                    fix: str = "drop --deep-cache for a resumable render (or --resumable for DeepCache's speed)") -> None:
    """DeepCache is refused (``option`` and ``fix`` name the switches as the caller's user sees them)."""
    if deep_cache and deep_cache > 1:
        raise EchoMimicError(f"{option} cannot keep DeepCache's features between steps: {fix}.")


def prune_states(folder: str | Path, max_age_s: float = MAX_AGE_S, now: float | None = None) -> list[Path]:
    """Remove the render states (``*.resume``, and the temporary files of a write that was cut off) in ``folder`` that
    were last written more than ``max_age_s`` ago: renders nobody went on with. Only regular files are removed (a
    link, folder or anything else there stays); each removal is logged. Returns what was removed."""
    folder, now = Path(folder), time.time() if now is None else now
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in sorted(entries):
        if not p.name.endswith((".resume", ".partial")):
            continue
        try:
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime <= max_age_s:
                continue
            p.unlink()
        except OSError as exc:
            log.warning("could not remove the old render state %s: %s", p, exc)
            continue
        removed.append(p)
        log.info("removed %s: a render state last written %.1f days ago (states are kept %g days)", p,
                 (now - st.st_mtime) / 86400, max_age_s / 86400)
    return removed
