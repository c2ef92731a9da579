"""Where a model lives: a Hub id, a local folder, or a .gguf file.

A .gguf file is converted once into a plain model folder (dequantized weights + tokenizer) in
tunesmith's cache, keyed by the file's path, size and mtime. Loading GGUF costs ~20 s for the
135M demo model (dequantization, tokenizer rebuild) on every start; the folder loads in ~1 s,
and transformers treats it as an ordinary model (GGUF-loaded models are flagged as quantized,
which Trainer and save_pretrained refuse).

Nothing here imports other tunesmith modules but errors.py: loading (hf.py), training and
inference all start from here.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def split_gguf(ref: str) -> tuple[str, dict]:
    """'dir/model.gguf' -> ('dir', {'gguf_file': 'model.gguf'}); anything else passes through."""
    if ref.endswith(".gguf"):
        p = Path(ref)
        return str(p.parent), {"gguf_file": p.name}
    return ref, {}


def local_model(ref: str) -> str:
    """A folder transformers loads as is: .gguf refs become their cached plain folder."""
    if not ref.endswith(".gguf") or not Path(ref).is_file():
        return ref
    stat = Path(ref).stat()
    key = hashlib.sha256(f"{Path(ref).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "gguf" / f"{Path(ref).stem}-{key}"
    if (folder / "config.json").is_file():
        return str(folder)
    print(f"tunesmith: converting {Path(ref).name} to a plain model folder once: {folder}", file=sys.stderr)
    convert_gguf(ref, folder)
    return str(folder)


def convert_gguf(ref: str, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, extra = split_gguf(ref)
    tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    model = dequantized_copy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra), torch.float32)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(folder)  # complete or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dequantized_copy(model, dtype):
    """The same architecture and weights as a plain model (no quantization_config). transformers
    dequantizes GGUF on load but marks the model quantized, so Trainer and save_pretrained refuse it."""
    import copy

    from transformers import AutoModelForCausalLM

    from tunesmith.errors import ModelError

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    real_missing = [k for k in missing if k not in getattr(plain, "_tied_weights_keys", {}) and "lm_head" not in k]
    if real_missing or unexpected:
        raise ModelError(f"GGUF weights do not fit the model: missing {real_missing[:5]}, unexpected {unexpected[:5]}")
    plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain
