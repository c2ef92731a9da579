"""Where a model lives: a Hub id, a local folder, or a .gguf file (folder + gguf_file)."""
from __future__ import annotations

from pathlib import Path


def split_gguf(ref: str) -> tuple[str, dict]:
    """'dir/model.gguf' -> ('dir', {'gguf_file': 'model.gguf'}); anything else passes through."""
    if ref.endswith(".gguf"):
        p = Path(ref)
        return str(p.parent), {"gguf_file": p.name}
    return ref, {}


def is_local(ref: str) -> bool:
    return Path(ref).exists()
