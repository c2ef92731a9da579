"""A tokenizer's identity, recorded with the prepared data so training can refuse a mismatch."""
from __future__ import annotations

import hashlib
import json

from tunesmith.data.tokenize import specials_of


def tokenizer_identity(tok) -> dict:
    vocab = json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False).encode()
    template = (getattr(tok, "chat_template", None) or "").encode()
    return {
        "name_or_path": str(getattr(tok, "name_or_path", "")),
        "vocab_size": len(tok),
        "vocab_sha256": hashlib.sha256(vocab).hexdigest()[:16],
        "bos_token_id": tok.bos_token_id,
        "adds_bos": specials_of(tok).adds_bos,
        "eos_token_id": tok.eos_token_id,
        "chat_template_sha256": hashlib.sha256(template).hexdigest()[:16] if template else None,
    }


def same_tokenizer(recorded: dict, current: dict) -> list[str]:
    """The identity fields that differ (name_or_path may differ: the same files can move)."""
    keys = ("vocab_size", "vocab_sha256", "bos_token_id", "eos_token_id", "adds_bos")
    # Only fields the data recorded: data from an older tunesmith may lack newer ones.
    return [f"{k}: data {recorded[k]!r} vs model {current.get(k)!r}" for k in keys if k in recorded and recorded[k] != current.get(k)]
