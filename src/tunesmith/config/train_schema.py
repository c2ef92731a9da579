"""The model part of a config: which weights, which method (full, LoRA, QLoRA), how to load them.

Trainer settings live under `training:` as plain TrainingArguments fields (checked against the
installed transformers in train/arguments.py), so nothing here shadows a Hugging Face name.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LoraConfig(_Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = Field(None, description="default: chosen per architecture")


class ModelConfig(_Strict):
    method: Literal["full", "lora", "qlora"] = "full"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        "auto", description="auto: flash_attention_2 on a CUDA GPU when flash-attn is installed, else sdpa")
    trust_remote_code: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quantization_bits: Literal[4, 8] = Field(4, description="QLoRA: load the base model in 4 or 8 bits (CUDA only)")
    merge: bool = Field(False, description="LoRA: also write merged/ (adapter folded into the base weights)")
    resume: Literal["auto", "never"] | str = Field("never", description="auto: continue from the latest checkpoint; or a checkpoint folder")
    early_stopping_patience: int | None = Field(None, gt=0, description="evaluations without improvement before stopping")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a step whose loss or gradients are NaN/inf: stop naming it, or skip its update (counted)")
    upload_to: list[str] = Field(default_factory=list, description="fsspec URLs to copy the output folder to when training ends")
