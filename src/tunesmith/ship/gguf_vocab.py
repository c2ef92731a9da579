"""The tokenizer in a GGUF file's metadata, in one of the two forms llama.cpp runs.

- Byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen, Phi-4): llama.cpp's `gpt2` model, with merges
  and the name of the pre-tokenizer's split pattern.
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral v0.1-0.3, Gemma, Phi-3): llama.cpp's
  `llama` model, which merges the adjacent pair whose result scores highest. tokenizer.json keeps
  merges, not scores, so each token's score is minus (1 +) the rank of the merge that makes it:
  the highest-scoring pair is the one BPE would merge first. Byte tokens (<0x0A>) are typed BYTE.

Anything else (Unigram, WordPiece, a split pattern llama.cpp has no name for) is refused: a file
whose tokenizer cuts text differently would run, and answer worse, without saying why.
"""
from __future__ import annotations

import json
import re

from tunesmith.errors import ModelError

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def write_tokenizer(writer, tokenizer, config, chat_template: str | None) -> None:
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    kind = tokenizer_kind(spec)
    vocab = tokenizer.get_vocab()
    if len(vocab) > config.vocab_size:
        raise ModelError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model only {config.vocab_size} embeddings",
                         "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) before exporting")
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(config.vocab_size):
        token = by_id.get(i, f"[PAD{i}]")  # rows of the embedding with no token (vocab padded up)
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif kind == "spm" and i == tokenizer.unk_token_id:  # as SentencePiece types it
            types.append(gguf.TokenType.UNKNOWN)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        elif kind == "spm" and BYTE_TOKEN.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    if kind == "bpe":
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(spec))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(merge_scores(tokens, merges))
        writer.add_token_types(types)
        writer.add_add_space_prefix(adds_space_prefix(spec))
    for token_id, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                          ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if getattr(tokenizer, token_id) is not None:
            add(getattr(tokenizer, token_id))
    adds_bos = bool(tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def tokenizer_notes(tokenizer) -> list[str]:
    """Where llama.cpp will tokenize differently from transformers though the file is right
    (measured in tests/test_runtime_gguf.py): llama.cpp's SentencePiece tokenizer puts '▁' before
    the text after every special token and before text that already starts with a space."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    meta = [p for p in pre.get("pretokenizers", [pre]) if p.get("type") == "Metaspace"]
    if not meta or tokenizer_kind(spec) != "spm":
        return []
    where = "text that starts with a space"
    if meta[0].get("prepend_scheme") == "first":
        where = "the text after each special token (chat markers included) and " + where
    return [f"llama.cpp's SentencePiece tokenizer adds a '▁' where this tokenizer (Metaspace) does not: before {where}"]


def check_name(name: str, tokenizer) -> None:
    """llama.cpp special-cases a file whose general.name contains 'phi3' or 'phi-3': every special
    token strips the whitespace after it, and '<|endoftext|>' is looked up, so a tokenizer without
    it fails to load ("unordered_map::at"). Measured with llama.cpp 0.3.36's loader."""
    if any(k in name.lower() for k in ("phi3", "phi-3")) and "<|endoftext|>" not in tokenizer.get_vocab():
        raise ModelError(f"GGUF export: the name {name!r} makes llama.cpp treat the file as Phi-3, and this tokenizer "
                         "has no <|endoftext|> token, so llama.cpp would fail to load it",
                         "choose a name without 'phi3' / 'phi-3' (the config's `name`, or --model with another folder name)")


def tokenizer_kind(spec: dict) -> str:
    """'bpe' (byte-level) or 'spm' (SentencePiece-style BPE with byte fallback); others refused."""
    model = spec["model"]
    if model["type"] == "BPE" and byte_level(spec):
        return "bpe"
    if model["type"] == "BPE" and model.get("byte_fallback"):
        if not any(BYTE_TOKEN.fullmatch(t) for t in model["vocab"]):
            raise ModelError("GGUF export: the tokenizer falls back to bytes but has no <0x..> byte tokens",
                             "llama.cpp's SentencePiece tokenizer needs the 256 byte tokens in the vocabulary")
        return "spm"
    raise ModelError(f"GGUF export: the tokenizer is {model['type']}"
                     f"{'' if model['type'] != 'BPE' else ' without byte-level pre-tokenizing or byte fallback'}",
                     "written: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM style) and SentencePiece BPE with "
                     "byte fallback (Llama 2, Mistral, Gemma, Phi-3 style)")


def merge_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """-(1 + rank of the first merge that produces each token); 0 for tokens no merge makes
    (single characters, bytes, specials), which llama.cpp never compares: it scores merge results."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1), r)
    return [-1.0 - rank[t] if t in rank else 0.0 for t in tokens]


def adds_space_prefix(spec: dict) -> bool:
    """Whether '▁' is put before the text (Llama 2's `Prepend` normalizer or a Metaspace pre-tokenizer
    that prepends); Gemma's tokenizer does not."""
    def parts(node: dict | None, key: str) -> list[dict]:
        return [] if not node else node.get(key, [node]) if node.get("type") == "Sequence" else [node]

    if any(p.get("type") == "Prepend" for p in parts(spec.get("normalizer"), "normalizers")):
        return True
    return any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never"
               for p in parts(spec.get("pre_tokenizer"), "pretokenizers"))


def byte_level(spec: dict) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre else []
    return any(p.get("type") == "ByteLevel" for p in parts)


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for how text is split before BPE, read from the tokenizer's own pre-tokenizer.
    GPT-2's regex alone is `gpt-2`; digits split one by one first (SmolLM) is `smollm`; a split
    pattern we cannot name is refused rather than tokenized differently at inference."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = parts[0].get("pattern", {}).get("Regex", "")
        if pattern.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"):
            return "llama-bpe"
        if pattern.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"):
            return "qwen2"  # digits one at a time
    raise ModelError(f"GGUF export: the tokenizer's pre-tokenizer ({' + '.join(map(str, kinds))}) has no llama.cpp name here",
                     "supported: GPT-2, SmolLM, Llama 3 and Qwen2 style splitting")
