"""Tiny random models of every family the GGUF export writes, and a SentencePiece-style tokenizer,
for tests/test_runtime_gguf.py (llama.cpp itself) and tests/test_gguf_families.py (the file).

Norms and biases are random (not the 1s and 0s of a fresh model), weights drawn wider than the
default init, and windows, soft-caps and rotary scaling set so each family's peculiarity changes
the logits of a 20-token prompt: a part llama.cpp reads differently shows as a wrong logit."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from helpers import CHATML_TEMPLATE, CORPUS, train_tokenizer

LAYERS2 = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=512)
# name -> (transformers config class, its arguments, tokenizer: "bpe" byte-level (GPT-2 split), "bpe-llama3" / "bpe-qwen2"
# (their split patterns), "spm" SentencePiece-style as Llama 2 ships it, "spm-gemma" without the prefix space)
VARIANTS = {
    "llama": ("LlamaConfig", dict(LAYERS2), "bpe"),
    "llama-3.1-rope": ("LlamaConfig", dict(LAYERS2, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), "bpe-llama3"),
    "llama-2-spm": ("LlamaConfig", dict(LAYERS2, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}), "spm"),
    "llama-biases-wide-heads": ("LlamaConfig", dict(LAYERS2, attention_bias=True, mlp_bias=True, head_dim=32), "bpe"),
    "mistral": ("MistralConfig", dict(LAYERS2, sliding_window=None), "bpe"),
    "qwen2": ("Qwen2Config", dict(LAYERS2), "bpe-qwen2"),
    "qwen3": ("Qwen3Config", dict(LAYERS2, head_dim=32), "bpe"),
    "qwen3-yarn": ("Qwen3Config", dict(LAYERS2, head_dim=32, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 128}), "bpe-qwen2"),
    "gemma": ("GemmaConfig", dict(LAYERS2, head_dim=32), "spm-gemma"),
    "gemma2": ("Gemma2Config", dict(LAYERS2, head_dim=32, query_pre_attn_scalar=32, sliding_window=6,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0), "spm-gemma"),
    "gemma3": ("Gemma3TextConfig", dict(LAYERS2, head_dim=32, query_pre_attn_scalar=32, sliding_window=6,
                                        layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=3.0,
                                        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                         "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}),
               "spm-gemma"),
    "phi3": ("Phi3Config", dict(LAYERS2, original_max_position_embeddings=512), "spm"),
    "phi3-longrope": ("Phi3Config", dict(LAYERS2, max_position_embeddings=1024, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "original_max_position_embeddings": 256,
        "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5], "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}), "bpe"),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512), "bpe"),
}


def train_spm_tokenizer(out_dir: Path, prefix_space: bool = True) -> Path:
    """SentencePiece-style BPE in tokenizer.json form, as Llama 2 / Mistral (a '▁' put before the
    text, `prefix_space`) and Gemma (none) ship it: spaces as '▁', byte fallback to <0x..> tokens."""
    steps = ([normalizers.Prepend("▁")] if prefix_space else []) + [normalizers.Replace(" ", "▁")]
    learner = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    learner.normalizer = normalizers.Sequence(steps)
    learner.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=400, show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if prefix_space else []))
    return saved_with_bos(tok, out_dir)


def saved_with_bos(tok: Tokenizer, out_dir: Path) -> Path:
    """A trained tokenizer saved as a Llama-style fast tokenizer: BOS first, ChatML template."""
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)
    return out_dir


def metaspace_tokenizer(out_dir: Path, scheme: str) -> Path:
    """The SentencePiece-style tokenizer with a Metaspace pre-tokenizer instead of the normalizer
    (how Mistral v0.3 and newer Llama 2 conversions ship it): `scheme` 'first' or 'always'."""
    from tokenizers import pre_tokenizers

    tok = AutoTokenizer.from_pretrained(train_spm_tokenizer(out_dir / "base", prefix_space=False))
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.save_pretrained(out_dir)
    return out_dir


# The split patterns of Llama 3's and Qwen2's tokenizer.json (llama.cpp's `llama-bpe` and `qwen2`).
SPLITS = {
    "bpe-llama3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "bpe-qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


def split_bpe_tokenizer(out_dir: Path, kind: str) -> Path:
    """Byte-level BPE behind a regex Split, as Llama 3 and Qwen2 ship it."""
    from tokenizers import Regex, pre_tokenizers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLITS[kind]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return saved_with_bos(tok, out_dir)


def make_tokenizer(kind: str, out_dir: Path) -> Path:
    if kind == "bpe":
        return train_tokenizer(out_dir, adds_bos=True)
    if kind in SPLITS:
        return split_bpe_tokenizer(out_dir, kind)
    return train_spm_tokenizer(out_dir, prefix_space=kind == "spm")


def make_tiny_family(variant: str, tok_dir: Path, out_dir: Path, seed: int = 0, **overrides) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    class_name, kwargs, _ = VARIANTS[variant]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = getattr(transformers, class_name)(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                pad_token_id=tok.pad_token_id, tie_word_embeddings=variant != "phi3",
                                                **{**kwargs, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gemma = config.model_type.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(torch.randn_like(p) * 0.3 + (0.0 if gemma else 1.0))  # Gemma scales by 1 + w
            elif name.endswith("bias") or p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.3)
            else:
                p.copy_(torch.randn_like(p) * 0.15)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def rounded_like_gguf(folder: Path, quant: str):
    """The transformers model with its matrices rounded as the GGUF file stores them (f16, or q8_0
    quantized and dequantized; rows that do not fill q8_0 blocks are f16, as the export writes them)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if quant == "f32":
        return model
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim < 2:
                continue
            if quant == "q8_0" and p.shape[-1] % 32 == 0:
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(p.shape)))
            else:
                p.copy_(p.half().float())
    return model
