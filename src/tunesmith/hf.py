"""Hugging Face helpers that data preparation, training and inference all use: the ignore index,
the dtype a config names, tokenizer and model loading, and writing a model folder atomically.

It sits below data/, train/ and infer/ and imports none of them, so each side can use it without
reaching into the other. torch and transformers are imported inside the functions: `tunesmith
prep` and `report` import this module and should not pay for torch at start-up.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.modelref import local_model

IGNORE = -100  # the label of a token that is not trained (PyTorch cross-entropy's ignore_index)


def resolve_dtype(name: str):
    """`auto`: bf16 on a GPU that supports it, else fp32 weights (CPU bf16 is autocast, see arguments.py)."""
    import torch

    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_tokenizer(ref: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(local_model(ref), trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError, ValueError, HF hub errors: all mean "cannot load this"
        raise ModelError(f"cannot load a tokenizer from {ref!r}: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                         "set base_model (or tokenizer) to a local folder with tokenizer files, a .gguf file, "
                         "or a Hub id when the Hub is reachable") from None
    if tok.eos_token_id is None:
        raise ModelError(f"tokenizer {ref!r} has no EOS token", "tunesmith ends every answer with EOS; use a tokenizer that has one")
    if tok.pad_token_id is None:
        # Safe with tunesmith's data: labels are set at prep time and padding never carries one,
        # so padding with EOS cannot mask a real EOS.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(ref: str, dtype: str = "auto", trust_remote_code: bool = False):
    """A model to run (not to train: training adds attention, quantization and LoRA, see train/model.py)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(local_model(ref), dtype=resolve_dtype(dtype),
                                                    trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {ref!r}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None


def generation_config(model, tokenizer):
    from transformers import GenerationConfig

    gc = GenerationConfig.from_model_config(model.config) if model.generation_config is None else model.generation_config
    gc = GenerationConfig(**{k: v for k, v in gc.to_dict().items() if not k.startswith("_")})
    gc.eos_token_id = tokenizer.eos_token_id
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    return gc


def save_folder(model, tokenizer, target: Path, extra: dict[str, str] | None = None) -> Path:
    """Model, tokenizer and generation config into `target`, written beside it and renamed when complete."""
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    return complete_folder(tmp, target, model, tokenizer, extra)


def complete_folder(tmp: Path, target: Path, model, tokenizer, extra: dict[str, str] | None = None) -> Path:
    """Add the tokenizer, generation config and extra files (name -> text) to the weights in `tmp`,
    then put it in place of `target`: a reader finds the old folder or the complete new one."""
    tokenizer.save_pretrained(tmp)
    generation_config(model, tokenizer).save_pretrained(tmp)
    for name, text in (extra or {}).items():
        (tmp / name).write_text(text)
    replace_folder(tmp, target)
    return target


def replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder `new` in place of `target`. With an old `target`, the two are
    exchanged in one step (Linux renameat2), so a kill at any moment leaves the old folder or the
    new one, never none; elsewhere the old one is moved aside first, a window of two renames."""
    if not target.exists():
        new.rename(target)
        return
    if not _exchange(new, target):
        aside = target.parent / f".{target.name}.old"
        shutil.rmtree(aside, ignore_errors=True)
        target.rename(aside)
        new.rename(target)
        new = aside
    shutil.rmtree(new)  # now the old folder


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system cannot (not Linux, an old kernel or libc)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
