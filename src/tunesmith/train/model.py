"""Base model (Hub id, folder or .gguf) + the method: full fine-tuning, LoRA, or QLoRA."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from tunesmith.config.schema import Config
from tunesmith.config.training_keys import checkpointing_requested
from tunesmith.errors import ModelError
from tunesmith.hf import resolve_dtype
from tunesmith.modelref import local_model
from tunesmith.train.distributed import local_rank
from tunesmith.translate_errors import lora_target_error, model_load_error


def resolve_attn_implementation(name: str, dtype: torch.dtype, cuda: bool | None = None,
                                flash_installed: bool | None = None) -> str:
    """`auto`: flash-attention 2 on a CUDA GPU when flash-attn is installed and the weights are
    bf16/fp16 (its kernels take nothing else), else sdpa. Named implementations pass through."""
    if name != "auto":
        return name
    cuda = torch.cuda.is_available() if cuda is None else cuda
    flash_installed = is_flash_attn_2_available() if flash_installed is None else flash_installed
    return "flash_attention_2" if cuda and flash_installed and dtype in (torch.bfloat16, torch.float16) else "sdpa"


def load_model(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    m = cfg.model
    path = local_model(cfg.base_model)  # a .gguf becomes its cached plain folder
    dtype = resolve_dtype(m.dtype)
    kwargs = dict(dtype=dtype, attn_implementation=resolve_attn_implementation(m.attn_implementation, dtype),
                  trust_remote_code=m.trust_remote_code)
    if m.method == "qlora":
        kwargs["quantization_config"] = _bnb_config(m.quantization_bits, kwargs["dtype"])
        # each process's copy on its own GPU; on a CPU, bitsandbytes' CPU kernels (checked in _bnb_config)
        kwargs["device_map"] = {"": local_rank() if torch.cuda.is_available() else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # missing/corrupt weights, unknown model type, no flash-attn, ...
        raise model_load_error(e, cfg.base_model, str(path)) from e
    model.config.pad_token_id = tokenizer.pad_token_id
    if m.trains_adapter:
        model = add_lora(model, cfg)
    return model


def base_causal_lm(model):
    """The *ForCausalLM inside a PEFT wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list:
    """The decoder blocks of a *ForCausalLM laid out as `model.layers` (Llama and its kin), else []."""
    layers = getattr(getattr(base_causal_lm(model), "model", None), "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _bnb_config(bits: int, compute_dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelError("model.method qlora needs the bitsandbytes package", "pip install bitsandbytes") from None
    if not torch.cuda.is_available():
        if bits == 8:
            raise ModelError("model.quantization_bits 8 needs a CUDA GPU (bitsandbytes' 8-bit kernels); none is available",
                             "use model.quantization_bits: 4 on a CPU, model.method: lora, or a GPU")
        if not cpu_4bit_runs():
            raise ModelError(f"model.method qlora: bitsandbytes {bitsandbytes.__version__} has no 4-bit kernels for this CPU "
                             "and there is no CUDA GPU", "use model.method: lora on this machine, a newer bitsandbytes, or a GPU")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def cpu_4bit_runs() -> bool:
    """Whether this bitsandbytes runs a 4-bit NF4 layer forward and backward on the CPU (0.50 does;
    older releases were CUDA only), tried on a tiny layer rather than read from a version list."""
    import bitsandbytes as bnb

    try:
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.load_state_dict({"weight": torch.randn(64, 64)})
        layer = layer.to("cpu")
        x = torch.randn(2, 64, requires_grad=True)
        layer(x).sum().backward()
        return bool(torch.isfinite(x.grad).all())
    except Exception:  # noqa: BLE001 - any failure means: not on this CPU
        return False


def lora_targets(model: PreTrainedModel) -> list[str]:
    """Every distinct linear layer name inside the transformer blocks (the QLoRA paper's choice)."""
    names = set()
    for name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")
        if is_linear and "lm_head" not in name and "embed" not in name:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def add_lora(model: PreTrainedModel, cfg: Config):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lc = cfg.model.lora
    if cfg.model.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing_requested(cfg.training))
    targets = lc.target_modules or lora_targets(model)
    peft_config = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                             task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:  # peft's NoMatchingPeftModuleError: target modules that match nothing
        raise lora_target_error(e, targets, lora_targets(model)) from e
