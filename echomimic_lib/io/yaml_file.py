"""Guards for reading a YAML file someone else wrote (a training config, ComfyUI's ``extra_model_paths.yaml``).

pyyaml's ``safe_load`` builds no code, and an alias (``*name``) is one shared object, so loading a 'billion laughs'
file (nine lists of nine aliases of the list before: a few hundred bytes, 9**9 values) is cheap; copying or walking
it is not. :func:`expanded_size_over` counts what a copy or a walk sees, stopping at the limit, and
:func:`file_size_over` lets a caller refuse an absurdly large file before reading it. Each caller words its own
message (what the file is, what to do).
"""
from __future__ import annotations

from pathlib import Path


def file_size_over(path: str | Path, limit: int) -> int | None:
    """The size of ``path`` when it is a regular file larger than ``limit`` bytes, else None."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return size if path.is_file() and size > limit else None


def expanded_size_over(data, limit: int, max_chars: int | None = None) -> bool:
    """Whether ``data`` holds more than ``limit`` values counted as a copy sees them (an alias of a list counts in full),
    or, with ``max_chars``, more than that many characters of text and keys counted the same way (an alias of a long
    string used as many values). Stops at the limit."""
    stack, seen, chars = [data], 0, 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif max_chars is not None and isinstance(item, (str, bytes)):
            chars += len(item)
            if chars > max_chars:
                return True
    return False


__all__ = ["expanded_size_over", "file_size_over"]
