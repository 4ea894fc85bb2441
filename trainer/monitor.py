"""Monitoring: TensorBoard scalars, a JSON-lines log (one line per step, easy to test and grep), memory
figures and the PNG plot of the loss curves written next to the checkpoints. Main process only."""
from __future__ import annotations

import json
import logging
import resource
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def memory_stats(device: torch.device) -> dict:
    """Peak memory since the last call: CUDA allocator peak (then reset), and the process's peak RSS."""
    out = {"mem/rss_peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
    if device.type == "cuda":
        out["mem/cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
        out["mem/cuda_reserved_gb"] = torch.cuda.memory_reserved(device) / 1024**3
        torch.cuda.reset_peak_memory_stats(device)
    return out


class Monitor:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool = True, plot: bool = True, fresh: bool = True):
        self.out_dir, self.enabled, self.plot_enabled = Path(out_dir), enabled, plot
        self.writer = None
        self.jsonl = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            # a resumed run appends (the steps after its checkpoint are logged again; readers keep the latest); a fresh
            # one never truncates an earlier run's log: the loop keeps that run's record aside first (a no-op here then)
            if fresh:
                from .earlier_run import LOG, keep_earlier_run

                keep_earlier_run(self.out_dir, names=(LOG,), with_config=False)
            self.jsonl = open(self.out_dir / "train_log.jsonl", "w" if fresh else "a", buffering=1)
            if not fresh and _torn(self.out_dir / "train_log.jsonl"):
                self.jsonl.write("\n")  # the killed run's torn last line stays one line (read_log skips it)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))
                except ImportError:
                    log.warning("tensorboard is not installed (pip install tensorboard); logging to train_log.jsonl only")

    def step(self, step: int, scalars: dict, text: dict | None = None) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}, **(text or {})}
        self.jsonl.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, float(v), step)

    def event(self, step: int, kind: str, **fields) -> None:
        """A non-scalar event (phase transition, non-finite loss, checkpoint) in the JSON log and TensorBoard text."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "event": kind, **fields}) + "\n")
        if self.writer is not None:
            self.writer.add_text(f"events/{kind}", json.dumps(fields), step)

    def metrics(self, step: int, kind: str, scalars: dict) -> None:
        """Evaluation scalars (validation quality metrics): one JSON-log event row and TensorBoard ``kind/<key>`` scalars."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "event": kind, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{kind}/{k}", float(v), step)

    def image(self, step: int, tag: str, image) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_image(tag, torch.as_tensor(image).permute(2, 0, 1), step)

    def plot(self, dest: Path) -> Path | None:
        """PNG of every loss term over steps (from train_log.jsonl)."""
        if not (self.enabled and self.plot_enabled):
            return None
        return plot_losses(self.out_dir / "train_log.jsonl", dest)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _torn(path: Path) -> bool:
    """Whether the log ends inside a line (a run killed while writing it)."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"


def read_log(path: Path) -> list[dict]:
    """The rows of a ``train_log.jsonl``. A line that is not a JSON object is skipped, not an error: the last line of a
    run killed while writing it is torn (and a resumed run's log holds it in the middle), and the log is a record of
    the run, never what resuming reads (:func:`echomimic_lib.jobs.batch.results.read_results` does the same)."""
    from echomimic_lib.errors import EchoMimicError
    from echomimic_lib.io.json_file import loads_json

    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    rows.append(loads_json(line, str(path), expect=dict))
                except EchoMimicError:  # torn, not UTF-8, or nested past what the parser reads: not a row
                    continue
    return rows


def plot_losses(log_path: Path, dest: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no loss plot")
        return None
    rows = [r for r in read_log(log_path) if "event" not in r and isinstance(r.get("step"), int)]
    last = {}
    for r in rows:  # a resumed run re-logs steps: keep the latest value of each step
        last[r["step"]] = r
    rows = [last[s] for s in sorted(last)]
    keys = sorted({k for r in rows for k in r if k.startswith("loss/")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k in keys:
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k[5:], linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    dest = Path(dest)
    from echomimic_lib.io.file_safety import publish, temp_beside

    tmp = temp_beside(dest, ".partial.png")
    try:
        fig.savefig(tmp, dpi=90, bbox_inches="tight")
        publish(tmp, dest)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return dest
