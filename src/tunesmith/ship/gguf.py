"""A plain model folder -> one GGUF file that llama.cpp, Ollama and transformers (`gguf_file=`) read.

Built on the `gguf` package: its writer, its tensor-name map (HF module name -> GGUF name) and its
quantizer. No converter script is downloaded. The tokenizer goes into the metadata (byte-level BPE:
tokens, types, merges, special ids, the BOS rule, the chat template), so the file runs on its own.

Only architectures whose tensors we lay out exactly as llama.cpp expects are mapped; others are
refused with a message, never written half right.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tunesmith.errors import ModelError

# model_type -> (gguf architecture, Q/K rows permuted to llama.cpp's rotary layout). Qwen2 (q/k/v
# biases) and Qwen3 (q/k norms, an explicit head_dim) rotate halves (NeoX style), as HF stores them.
ARCHITECTURES = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False), "qwen3": ("QWEN3", False)}
QUANTS = ("f16", "q8_0")
Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values


def export_gguf(folder: str | Path, target: str | Path, quant: str = "f16", name: str | None = None,
                license: str | None = None, chat_template: str | None = None) -> Path:
    """Write `target` (.gguf) from the model folder; written beside it and renamed when complete.
    `chat_template`: the one to write instead of the tokenizer's own (the training prompt format's)."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant not in QUANTS:
        raise ModelError(f"--quant {quant}: not a supported quantization", f"use one of {', '.join(QUANTS)}")
    config = AutoConfig.from_pretrained(folder)
    arch_name, permute_qk = architecture_of(config)
    check_rope(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    arch = getattr(gguf.MODEL_ARCH, arch_name)

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    try:
        write_hparams(writer, config, quant, name or Path(folder).name)
        if license:
            writer.add_license(license)
        write_tokenizer(writer, tokenizer, config, chat_template or getattr(tokenizer, "chat_template", None))
        write_tensors(writer, model, config, arch, permute_qk, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.rename(target)  # complete or absent
    finally:
        tmp.unlink(missing_ok=True)
    return target


def architecture_of(config) -> tuple[str, bool]:
    if config.model_type not in ARCHITECTURES:
        raise ModelError(f"GGUF export does not map the {config.model_type!r} architecture yet",
                         f"supported: {', '.join(sorted(ARCHITECTURES))}; "
                         "use llama.cpp's convert_hf_to_gguf.py on merged/ for other models")
    return ARCHITECTURES[config.model_type]


def check_rope(config) -> None:
    """Plain rotary embeddings only: scaled variants need extra tensors llama.cpp computes at conversion."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else "default"
    if kind not in ("default", None):
        raise ModelError(f"GGUF export: rotary scaling {kind!r} is not written yet",
                         "export models with plain rotary embeddings, or convert merged/ with llama.cpp")


def rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def write_hparams(writer, config, quant: str, name: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:  # Qwen3: heads wider than hidden/heads
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_tokenizer(writer, tokenizer, config, chat_template: str | None) -> None:
    """Byte-level BPE vocabulary, merges and special tokens, as llama.cpp's `gpt2` tokenizer reads them."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or not byte_level(spec):
        raise ModelError(f"GGUF export: the tokenizer is {spec['model']['type']}, not byte-level BPE",
                         "only byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM, Qwen style) are written yet")
    vocab = tokenizer.get_vocab()
    if len(vocab) > config.vocab_size:
        raise ModelError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model only {config.vocab_size} embeddings",
                         "resize the model's embeddings to the tokenizer (model.resize_token_embeddings) before exporting")
    size = config.vocab_size
    by_id = {i: t for t, i in vocab.items()}
    added = {t.content: t.special for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i, f"[PAD{i}]")  # rows of the embedding with no token (vocab padded up)
        tokens.append(token)
        if i not in by_id:
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = spec["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for token_id, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                          ("unk_token_id", writer.add_unk_token_id), ("pad_token_id", writer.add_pad_token_id)):
        if getattr(tokenizer, token_id) is not None:
            add(getattr(tokenizer, token_id))
    adds_bos = bool(tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
    writer.add_add_bos_token(adds_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


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


def write_tensors(writer, model, config, arch, permute_qk: bool, quant: str) -> None:
    import gguf

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent, as transformers does
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ModelError(f"GGUF export: no GGUF name for tensor {hf_name!r}",
                             "this model has parts the Llama layout does not have; convert merged/ with llama.cpp")
        data = tensor.detach().float().numpy()
        if permute_qk and gguf_name.endswith(("attn_q", "attn_k")):
            heads = config.num_attention_heads if gguf_name.endswith("attn_q") else config.num_key_value_heads
            data = rotary_rows_to_gguf(data, heads)
        add_tensor(writer, f"{gguf_name}.{suffix}", data, quant)


def rotary_rows_to_gguf(w: np.ndarray, heads: int) -> np.ndarray:
    """HF stores each head's rotary dimensions as two halves; llama.cpp wants them interleaved in pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_tensor(writer, name: str, data: np.ndarray, quant: str) -> None:
    """Norms and other 1-D tensors stay f32 (as llama.cpp writes them); matrices go to f16 or q8_0."""
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, or rows that do not fill q8_0 blocks
        writer.add_tensor(name, data.astype(np.float16))
