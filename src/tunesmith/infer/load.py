"""A model for inference: the base model, a full fine-tune, a merged model, or a LoRA adapter."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from tunesmith.config.schema import Config
from tunesmith.data.tokenize import load_tokenizer
from tunesmith.errors import ModelError
from tunesmith.modelref import local_model
from tunesmith.train.model import resolve_dtype


def load_for_inference(cfg: Config, model_path: str | None = None):
    """(model, tokenizer); `model_path` None means the config's base_model."""
    ref = model_path or cfg.base_model
    if model_path and not Path(model_path).exists():
        raise ModelError(f"--model {model_path}: folder not found", "point at final/ or merged/ of a run, or omit it for the base model")
    adapter = Path(ref) / "adapter_config.json"
    if adapter.is_file():
        base_ref = base_of_adapter(Path(ref), cfg)
        base = _load(base_ref, cfg)
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, ref)
    else:
        model = _load(ref, cfg)
    tok_ref = ref if (Path(ref) / "tokenizer_config.json").is_file() else (cfg.tokenizer or cfg.base_model)
    tokenizer = load_tokenizer(tok_ref, cfg.model.trust_remote_code)
    model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tokenizer


def base_of_adapter(folder: Path, cfg: Config) -> str:
    recorded = folder / "tunesmith_base_model.txt"
    if recorded.is_file():
        return recorded.read_text().strip()
    return json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or cfg.base_model


def _load(ref: str, cfg: Config):
    try:
        return AutoModelForCausalLM.from_pretrained(local_model(ref), dtype=resolve_dtype(cfg.model.dtype),
                                                    trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {ref!r}: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from None
