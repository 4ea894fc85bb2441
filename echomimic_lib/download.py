"""Fetching missing weights from Hugging Face into the models folder (huggingface_hub, on demand only)."""
from __future__ import annotations

import logging
from pathlib import Path

from .errors import MissingWeightsError
from .model_set import HF_SOURCES, resolve_files
from .modes import WEIGHT_SETS

log = logging.getLogger(__name__)


def _downloads(root: Path, weights: str, detail: dict) -> list[tuple[str, str, Path]]:
    """(repo, remote filename, local_dir) for one missing component."""
    comp = detail["component"]
    if comp == "vae":
        repo, files = HF_SOURCES["vae"]
        return [(repo, f, root / "sd-vae-ft-mse") for f in files]
    if comp == "whisper":
        repo, files = HF_SOURCES["whisper"]
        return [(repo, f, root) for f in files]
    ws = WEIGHT_SETS[weights]
    return [(ws.hf_repo, detail["name"], root / ws.folder)]


def ensure_weights(root: str | Path, weights: str, variant: str = "normal", need=None, download: bool = True,
                   force: bool = False) -> dict:
    """Resolve the files of a model set; download the missing ones when ``download`` is true.

    A file that is already there is never replaced (a component found incomplete only gets its missing
    files), unless ``force``. On failure the error lists every missing file, where it was looked for, and
    where to get it."""
    root = Path(root)
    kw = {} if need is None else {"need": need}
    try:
        return resolve_files(root, weights, variant, **kw)
    except MissingWeightsError as err:
        if not download:
            raise
        first = err
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise MissingWeightsError(f"{first}\n(huggingface_hub is not installed: pip install huggingface_hub)", first.missing) from exc
    for detail in getattr(first, "details", []):
        for repo, filename, local_dir in _downloads(root, weights, detail):
            if (local_dir / filename).exists() and not force:
                log.info("keeping %s (already there; --force replaces it)", local_dir / filename)
                continue
            log.info("downloading %s/%s -> %s", repo, filename, local_dir)
            try:
                local_dir.mkdir(parents=True, exist_ok=True)
                hf_hub_download(repo_id=repo, filename=filename, local_dir=str(local_dir))
            except Exception as exc:
                raise MissingWeightsError(
                    f"{first}\nDownloading {repo}/{filename} failed: {type(exc).__name__}: {exc}\n"
                    "If this machine is offline, copy the files into the layout above and point --models at it.",
                    first.missing,
                ) from exc
    return resolve_files(root, weights, variant, **kw)
