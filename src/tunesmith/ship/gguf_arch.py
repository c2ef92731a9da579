"""Per model family: llama.cpp's architecture, the hyper-parameters it reads, and what to do to an HF
tensor so llama.cpp computes what transformers computes.

Facts from llama.cpp's loaders (src/models/<arch>.cpp), checked by tests/test_runtime_gguf.py in
llama.cpp itself:
- Llama / Mistral: HF rotates each head's halves, llama.cpp interleaved pairs, so Q/K rows are
  re-ordered. Qwen2/3, Gemma, Phi-3 rotate halves in both (NeoX style): written as stored.
- Gemma 1/2/3: RMSNorm multiplies by (1 + w) in transformers, by w in llama.cpp: norms written
  as w + 1. The sqrt(hidden) embedding scale is llama.cpp's own (not in any tensor); the
  attention scale is 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B sizes, picked by layer
  count), so a query_pre_attn_scalar that disagrees is refused. Which layers slide is written
  per layer from config.layer_types.
- Phi-3/4: fused qkv_proj and gate_up_proj are llama.cpp's attn_qkv and ffn_up as they are.
  llama.cpp switches Phi sliding-window attention off (its loader warns), so contexts longer
  than `sliding_window` differ from transformers.
- GPT-2: Conv1D stores weights as (in, out): transposed to the (out, in) of every other layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tunesmith.errors import ModelError


@dataclass(frozen=True)
class Family:
    arch: str  # gguf.MODEL_ARCH member
    permute_qk: bool = False  # Llama's rotary layout (see rotary_rows_to_gguf)
    norm_plus_one: bool = False  # Gemma's RMSNorm scales by 1 + w
    conv1d: bool = False  # GPT-2's (in, out) weights
    rope: tuple[str, ...] = ("default",)  # rotary variants written for this family


FAMILIES = {
    "llama": Family("LLAMA", permute_qk=True, rope=("default", "linear", "llama3", "yarn")),
    "mistral": Family("LLAMA", permute_qk=True, rope=("default", "linear", "yarn")),
    "qwen2": Family("QWEN2", rope=("default", "linear", "yarn")),
    "qwen3": Family("QWEN3", rope=("default", "linear", "yarn")),
    "gemma": Family("GEMMA", norm_plus_one=True),
    "gemma2": Family("GEMMA2", norm_plus_one=True),
    "gemma3_text": Family("GEMMA3", norm_plus_one=True, rope=("default", "linear")),
    "phi3": Family("PHI3", rope=("default", "longrope")),
    "gpt2": Family("GPT2", conv1d=True, rope=()),
}

# Families tunesmith can train but not write, with the reason (the rest are named generically).
REFUSED = {
    "gemma3": "this is Gemma 3's multimodal model (a vision tower and a language_model inside); "
              "train and export its text-only form (Gemma3ForCausalLM, model_type gemma3_text)",
    "phi": "Phi-1/2 (parallel attention and MLP, LayerNorm with biases) is not mapped",
    "gpt_neox": "GPT-NeoX/Pythia (parallel residual, fused per-head qkv) is not mapped",
}


def family_of(config) -> Family:
    model_type = config.model_type
    if model_type not in FAMILIES:
        reason = REFUSED.get(model_type, "not mapped")
        raise ModelError(f"GGUF export does not write the {model_type!r} architecture: {reason}",
                         f"written: {', '.join(sorted(FAMILIES))}; for others run llama.cpp's convert_hf_to_gguf.py on merged/")
    family = FAMILIES[model_type]
    check_family(config, family)
    return family


def check_family(config, family: Family) -> None:
    """What llama.cpp's graph for the architecture would compute differently: refused, not written."""
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    if family.arch.startswith("GEMMA") and act not in ("gelu_pytorch_tanh", None):
        raise ModelError(f"GGUF export: {config.model_type} with activation {act!r}: llama.cpp runs tanh-approximated GELU",
                         "export models with hidden_activation gelu_pytorch_tanh (every released Gemma)")
    if family.arch in ("GEMMA2", "GEMMA3"):  # Gemma 1 scales by 1/sqrt(head_dim) in both
        big = {"GEMMA2": 46, "GEMMA3": 62}[family.arch]  # llama.cpp's 27B sizes scale by hidden/heads
        scalar = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == big else config.head_dim
        if config.query_pre_attn_scalar != scalar:
            raise ModelError(f"GGUF export: query_pre_attn_scalar {config.query_pre_attn_scalar}, but llama.cpp scales "
                             f"queries by 1/sqrt({scalar}) for a {config.num_hidden_layers}-layer {config.model_type}",
                             "export only Gemma shapes llama.cpp knows (query_pre_attn_scalar = head_dim, or hidden/heads at 27B)")
    local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention", {})
    if family.arch == "GEMMA3" and local.get("rope_type", "default") != "default":
        raise ModelError(f"GGUF export: Gemma 3 with {local['rope_type']!r} rotary scaling on its sliding layers: llama.cpp "
                         "scales only the global layers", "export with plain rotary embeddings on the sliding layers, as released")
    if family.arch == "GPT2" and (getattr(config, "scale_attn_by_inverse_layer_idx", False) or getattr(config, "reorder_and_upcast_attn", False)):
        raise ModelError("GGUF export: GPT-2 with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn",
                         "llama.cpp's GPT-2 graph has neither; export a plain GPT-2")
    if family.arch == "GPT2" and config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ModelError(f"GGUF export: GPT-2 with activation {config.activation_function!r}: llama.cpp runs tanh-approximated GELU",
                         "export GPT-2 models with activation_function gelu_new")


def family_notes(config, family: Family) -> list[str]:
    """What llama.cpp's graph leaves out for this family, with the context length where it shows."""
    window = getattr(config, "sliding_window", None)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        window = None
    if family.arch in ("LLAMA", "QWEN2", "PHI3") and window and window < config.max_position_embeddings:
        return [f"llama.cpp runs {config.model_type} without its sliding window ({window} tokens): "
                f"past {window} tokens of context its answers differ from transformers'"]
    return []


def rope_params(config) -> dict:
    """transformers 5 keeps rotary settings in rope_parameters (per layer type for Gemma 3)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if "full_attention" in params:
        return params["full_attention"]
    return params


def rope_kind(config) -> str:
    params = rope_params(config)
    return str(params.get("rope_type", params.get("type", "default")) or "default")


def rope_theta(config, layer_type: str = "full_attention") -> float:
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get(layer_type, params)
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rotary_dims(config) -> int:
    """Phi-4-mini rotates 3/4 of each head (partial_rotary_factor)."""
    factor = rope_params(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) or 1.0
    return int(head_dim(config) * factor)


def write_hparams(writer, config, family: Family) -> None:
    """The hyper-parameters llama.cpp's loader for `family.arch` reads."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    if family.conv1d:  # GPT-2: LayerNorm, learned positions, no rotary
        writer.add_feed_forward_length(getattr(config, "n_inner", None) or 4 * config.hidden_size)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(rotary_dims(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:  # Qwen3, Gemma: heads wider than hidden/heads
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_rope_freq_base(rope_theta(config))
    if family.arch in ("GEMMA2", "GEMMA3"):
        write_gemma(writer, config, family)
    if family.arch == "PHI3":
        writer.add_sliding_window(config.sliding_window or 0)  # read (and switched off) by llama.cpp
        orig = rope_params(config).get("original_max_position_embeddings") or getattr(config, "original_max_position_embeddings", None)
        if orig:
            writer.add_rope_scaling_orig_ctx_len(orig)


def write_gemma(writer, config, family: Family) -> None:
    if family.arch == "GEMMA2" and not (config.attn_logit_softcapping and config.final_logit_softcapping):
        raise ModelError("GGUF export: Gemma 2 without attention or final logit soft-capping: llama.cpp's Gemma 2 always caps "
                         "(at 50 and 30 when the file says nothing)",
                         "export Gemma 2 with both attn_logit_softcapping and final_logit_softcapping set, as released")
    if family.arch == "GEMMA2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    elif config.attn_logit_softcapping:
        raise ModelError("GGUF export: Gemma 3 with attn_logit_softcapping: llama.cpp's Gemma 3 graph has none",
                         "export with attn_logit_softcapping: null, as Gemma 3 is released")
    if config.final_logit_softcapping:
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    types = getattr(config, "layer_types", None) or []
    if "sliding_attention" in types and config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in types])
        writer.add_rope_freq_base_swa(rope_theta(config, "sliding_attention"))
    elif family.arch == "GEMMA2":  # llama.cpp's Gemma 2 always slides: a window no sequence reaches
        writer.add_sliding_window(config.max_position_embeddings)


def rope_scaling(writer, config, family: Family) -> list[tuple[str, np.ndarray]]:
    """Metadata and extra tensors for a scaled rotary embedding; (gguf name, f32 data) pairs."""
    import gguf

    if not family.rope:
        return []  # learned positions (GPT-2)
    kind, params = rope_kind(config), rope_params(config)
    if kind not in family.rope:
        raise ModelError(f"GGUF export: rotary scaling {kind!r} is not written for {config.model_type}",
                         f"written for {config.model_type}: {', '.join(family.rope) or 'none (learned positions)'}; "
                         "for others convert merged/ with llama.cpp's convert_hf_to_gguf.py")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    if kind == "yarn":  # llama.cpp derives the attention scale (0.1 ln(factor) + 1) as transformers does
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params.get("original_max_position_embeddings") or config.max_position_embeddings))
        for key, add in (("beta_fast", writer.add_rope_scaling_yarn_beta_fast), ("beta_slow", writer.add_rope_scaling_yarn_beta_slow),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor)):
            if params.get(key) is not None:
                add(float(params[key]))
    if kind == "llama3":
        return [(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config, params))]
    if kind == "longrope":
        return phi3_longrope(writer, config, params)
    return []


def llama3_rope_factors(config, params: dict) -> np.ndarray:
    """Llama 3.1's per-frequency divisors: long wavelengths slowed by `factor`, short ones kept,
    a smooth blend between (Meta's reference; llama.cpp multiplies each position's angle by 1/f)."""
    dim, base = head_dim(config), rope_theta(config)
    factor, low, high = params["factor"], params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old = params.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi * base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    factors = 1.0 / ((1 - smooth) / factor + smooth)
    return factors.astype(np.float32)


def phi3_longrope(writer, config, params: dict) -> list[tuple[str, np.ndarray]]:
    """Phi-3's long-context rotary: per-frequency factors for short and long contexts, and the
    attention factor transformers applies to cos/sin. llama.cpp picks the long factors when the
    context it is given (n_ctx) exceeds original_max_position_embeddings; transformers when the
    sequence does: they agree for contexts up to that length."""
    import gguf

    long, short = params.get("long_factor"), params.get("short_factor")
    orig = params.get("original_max_position_embeddings") or config.original_max_position_embeddings
    if not long or not short or len(long) != len(short) or len(long) != rotary_dims(config) // 2:
        raise ModelError("GGUF export: Phi-3 longrope without long_factor/short_factor of rotary_dims/2 values each",
                         "check rope_parameters in the model's config.json")
    scale = config.max_position_embeddings / orig
    factor = params.get("attention_factor") or (math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1 else 1.0)
    writer.add_rope_scaling_attn_factors(float(factor))
    name = lambda t: gguf.TENSOR_NAMES[t] + ".weight"  # noqa: E731
    return [(name(gguf.MODEL_TENSOR.ROPE_FACTORS_LONG), np.asarray(long, np.float32)),
            (name(gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT), np.asarray(short, np.float32))]


def tensor_for_gguf(hf_name: str, gguf_name: str, data: np.ndarray, config, family: Family) -> np.ndarray:
    """One HF tensor as llama.cpp reads it (see the module docstring for why each case)."""
    if family.permute_qk and gguf_name.endswith(("attn_q", "attn_k")):
        heads = config.num_attention_heads if gguf_name.endswith("attn_q") else config.num_key_value_heads
        data = rotary_rows_to_gguf(data, heads)
    if family.norm_plus_one and hf_name.endswith("norm.weight"):
        data = data + 1.0
    if family.conv1d and data.ndim == 2 and hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
        data = np.ascontiguousarray(data.T)
    return data


def rotary_rows_to_gguf(w: np.ndarray, heads: int) -> np.ndarray:
    """HF stores each head's rotary dimensions as two halves; llama.cpp wants them interleaved in pairs."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
