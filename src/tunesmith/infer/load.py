"""A model for inference: the base model, a full fine-tune, a merged model, or a LoRA adapter."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tunesmith.config.schema import Config
from tunesmith.errors import ModelError
from tunesmith.hf import load_causal_lm, load_tokenizer


def load_for_inference(cfg: Config, model_path: str | None = None):
    """(model, tokenizer); `model_path` None means the config's base_model."""
    ref = model_path or cfg.base_model
    if model_path and not Path(model_path).exists():
        raise ModelError(f"--model {model_path}: folder not found", "point at final/ or merged/ of a run, or omit it for the base model")
    adapter = Path(ref) / "adapter_config.json"
    if adapter.is_file():
        base_ref = base_of_adapter(Path(ref), cfg)
        base = load_causal_lm(base_ref, cfg.model.dtype, cfg.model.trust_remote_code)
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, ref)
    else:
        model = load_causal_lm(ref, cfg.model.dtype, cfg.model.trust_remote_code)
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
