"""The model part of a config: which weights, which method (full, LoRA, QLoRA), how to load them.

Trainer settings live under `training:` as plain TrainingArguments fields (checked against the
installed transformers in config/training_keys.py), so nothing here shadows a Hugging Face name.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LoraConfig(_Strict):
    """The LoRA adapter (peft), for `method: lora` and `qlora`."""

    r: int = Field(16, gt=0, description="the adapter's rank")
    alpha: int = Field(32, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="layer names to adapt; default: every linear layer inside the transformer blocks (not lm_head or embeddings)")


SpeedupSwitch = Literal["auto", "off"]


class SpeedupsConfig(_Strict):
    """tunesmith's speed-ups (train/speedups.py): `auto` applies each where the model's structure allows it."""

    liger: SpeedupSwitch = Field(
        "auto", description="Liger's Triton kernels for RMSNorm, the SwiGLU MLP and RoPE (training.use_liger_kernel): "
                            "auto on a CUDA GPU with liger-kernel installed, for the model types Liger knows")
    varlen_attention: SpeedupSwitch = Field(
        "auto", description="attention per example on packed and padding-free rows (causal sdpa on each example "
                            "instead of a block mask over the row); auto where the model hands attention kwargs "
                            "down and attention is sdpa or flash-attention. Off also makes batching auto padded")
    norm_casts: SpeedupSwitch = Field(
        "auto", description="under bf16 autocast, one bf16 copy of each pre-attention and pre-MLP norm output shared "
                            "by the linears that read it; auto for pre-norm blocks (input_layernorm and "
                            "post_attention_layernorm only)")
    swiglu: SpeedupSwitch = Field(
        "auto", description="the MLP's silu(gate) * up recomputes silu(gate) in backward instead of keeping it; auto "
                            "for SiLU-gated MLPs (gate_proj/up_proj or gate_up_proj) unless Liger's SwiGLU runs")
    release_memory: SpeedupSwitch = Field(
        "auto", description="give the memory each decoder layer freed back to the system (glibc's malloc_trim after "
                            "each layer's forward and before its backward): resident memory stays near what the "
                            "tensors use on long rows; auto on a CPU with gradient checkpointing and glibc, in steps of "
                            "8,192 tokens or more")

    @field_validator("*", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML reads a bare `off` as false (and `on` as true): `swiglu: off` must still mean "off".
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v


PAIR_OBJECTIVES = ("dpo", "ipo", "simpo", "orpo")  # trained on chosen/rejected pairs; kto on unpaired rows


class ObjectiveConfig(_Strict):
    """What training optimises (train/objectives/): `objective: dpo` is short for `objective: {name: dpo}`."""

    name: Literal["sft", "dpo", "ipo", "simpo", "orpo", "kto"] = Field(
        "sft", description="sft: cross-entropy on the answers; on preference pairs (prompt, chosen, rejected): dpo "
                           "(sigmoid), ipo, simpo (reference-free, length-normalised), orpo (SFT plus odds ratio, "
                           "reference-free); on unpaired rows (prompt, completion, label): kto")
    beta: float | None = Field(
        None, gt=0, description="the preference objectives' beta (TRL's meaning): dpo/ipo/kto 0.1, simpo 2.0, "
                                "orpo 0.1 (the odds-ratio term's weight) when not given")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo: the assumed share of flipped preference labels "
                                                                  "(conservative DPO)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin (TRL's simpo_gamma)")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the desirable rows' loss")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the undesirable rows' loss")
    reference: Literal["auto", "adapter_off", "precomputed"] = Field(
        "auto", description="dpo, ipo, kto: where the reference log-probs come from, with no second model in memory. "
                            "adapter_off: the base model with the LoRA adapter switched off, in the same step; "
                            "precomputed: one pass of the starting model over the data before training, stored with "
                            "the prepared data by the model's identity; auto: adapter_off for lora/qlora, else precomputed")

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, data):
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _keys_of_this_objective(self) -> ObjectiveConfig:
        if self.label_smoothing and self.name not in ("dpo", "simpo"):
            raise ValueError(f"label_smoothing applies to dpo and simpo, not {self.name}: remove it")
        if self.reference != "auto" and not self.needs_reference:
            raise ValueError(f"reference: {self.name} has no reference model ({'reference-free' if self.name != 'sft' else 'sft'}): "
                             "remove it")
        return self

    @property
    def on_pairs(self) -> bool:
        return self.name in PAIR_OBJECTIVES

    @property
    def needs_reference(self) -> bool:
        return self.name in ("dpo", "ipo", "kto")

    @property
    def data_kind(self) -> str:
        """The prepared rows the objective trains on: '' (SFT rows), 'pairs' or 'unpaired'."""
        return "pairs" if self.on_pairs else ("unpaired" if self.name == "kto" else "")

    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else (2.0 if self.name == "simpo" else 0.1)


class ModelConfig(_Strict):
    """Which method trains the model, and how its weights are loaded."""

    method: Literal["full", "lora", "qlora"] = Field(
        "full", description="full: every weight; lora: a LoRA adapter (peft); qlora: LoRA on a 4- or 8-bit base "
                "(bitsandbytes; 4-bit also on a CPU where bitsandbytes has CPU kernels, 0.50 does)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights' dtype; auto: bf16 on a GPU that has it (else fp16), fp32 on a CPU (bf16 autocast where the CPU has it)")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = Field(
        "auto", description="auto: flash_attention_2 on a CUDA GPU when flash-attn is installed, else sdpa")
    trust_remote_code: bool = Field(False, description="run Python code shipped with the model (its folder or Hub repo): only for code you trust")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="the adapter, for lora and qlora")
    quantization_bits: Literal[4, 8] = Field(4, description="QLoRA: load the base model in 4 or 8 bits (8: CUDA only)")
    merge: bool = Field(False, description="LoRA: also write merged/ (adapter folded into the base weights)")
    resume: Literal["auto", "never"] | str = Field(
        "never", description="never; auto: continue from the newest complete checkpoint (one cut short is skipped); or a checkpoint folder")
    early_stopping_patience: int | None = Field(None, gt=0, description="evaluations without improvement before stopping")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a step whose loss or gradients are NaN/inf: stop naming it, or skip its update (counted)")
    loss: Literal["auto", "trained_positions", "model"] = Field(
        "auto", description="trained_positions: cross-entropy inside the model's forward at trained positions only, "
                            "a chunk of positions at a time (less memory, faster; honours training.label_smoothing_factor; "
                            "refused where the logits are not lm_head's output, e.g. soft-capped or scaled); model: the "
                            "model's own loss on full-vocabulary logits; auto: trained_positions where it applies, else model")
    speedups: SpeedupsConfig = Field(default_factory=SpeedupsConfig,
                                     description="switch tunesmith's speed-ups off one by one (auto or off each)")
    upload_to: list[str] = Field(default_factory=list, description="fsspec URLs to copy the output folder to when training ends")

    @property
    def trains_adapter(self) -> bool:
        """The one place that says whether a run trains an adapter (LoRA or QLoRA) or every weight."""
        return self.method in ("lora", "qlora")
