"""The one truth of what a tunesmith config may say (pydantic models).

Every model forbids unknown keys, so a typo fails before any work starts; load.py turns
pydantic's errors into messages with the key's dotted path and the closest valid name.
"""
from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class SourceConfig(Strict):
    """Where rows come from: exactly one of `path`, `from_disk`, `function`."""

    path: str | None = Field(None, description="load_dataset path: a builder (json, csv, parquet, text), a Hub name or a local folder")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="load_dataset's data_files: files or glob patterns; without `path`, the builder follows from the "
                          "extension (.json/.jsonl, .csv/.tsv, .parquet, .txt, .arrow)")
    data_dir: str | None = Field(None, description="load_dataset's data_dir: a folder of data files")
    name: str | None = Field(None, description="the dataset's config name (load_dataset's `name`)")
    split: str = Field("train", description="the split to read; may slice (`train[:80]`); with from_disk, picks from a DatasetDict")
    from_disk: str | None = Field(None, description="a folder written by Dataset.save_to_disk (or DatasetDict)")
    function: str | None = Field(None, description="module:function or file.py:function returning a Dataset")
    storage_options: dict[str, Any] | None = Field(None, description="fsspec options for remote URLs (s3://, gs://, ...)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for load_dataset")

    @model_validator(mode="before")
    @classmethod
    def _infer_builder(cls, data: Any) -> Any:
        # `data_files: x.jsonl` alone is enough: the builder follows from the extension.
        if isinstance(data, dict) and not any(data.get(k) for k in ("path", "from_disk", "function")):
            files = data.get("data_files")
            first = files if isinstance(files, str) else (files[0] if isinstance(files, list) and files else None)
            if isinstance(first, str):
                builder = builder_for(first)
                if builder:
                    data = {**data, "path": builder}
        return data

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> SourceConfig:
        given = [k for k in ("path", "from_disk", "function") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of `path` (with data_files/data_dir), `from_disk` or `function`"
                + (f"; got {', '.join(given)}" if given else "")
            )
        return self


_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".txt": "text", ".arrow": "arrow"}


def builder_for(filename: str) -> str | None:
    name = filename.lower().removesuffix(".gz").removesuffix(".zst").removesuffix(".bz2")
    return next((b for ext, b in _BUILDERS.items() if name.endswith(ext)), None)


def template_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


class FewShotExample(Strict):
    """One few-shot example, rendered before every row in the row's format and never trained."""

    input: str = Field(description="the example's input, through input_template")
    context: str | list[str] | None = Field(None, description="its context(s), through context_template")
    response: str = Field(description="its answer, through response_template (masked like the rest of the prompt)")


class PromptConfig(Strict):
    """How one example becomes text: system message, few-shot examples, templates."""

    system_message: str | None = Field(None, description="a system message before every row (chat rows that bring their own keep theirs)")
    examples: list[FewShotExample] = Field(default_factory=list, description="few-shot examples before every row: always masked")
    input_template: str = Field("{text}", description="wraps the row's input or prompt; must contain {text} and no other field")
    context_template: str = Field("{text}", description="wraps each context; {text}, and {index} (1-based)")
    response_template: str = Field("{text}", description="text before {text} is a cue that precedes the answer (masked), text after it "
                                                         "ends the answer (trained)")
    context_pair_template: str | None = Field(
        None, description="read contexts as (question, answer) pairs rendered with this template ({question}, {answer}), "
                          "joined by newlines into one context (the two-step workflow's StandaloneQuestion)")

    @field_validator("input_template", "response_template")
    @classmethod
    def _needs_text(cls, v: str) -> str:
        fields = template_fields(v)
        if fields != {"text"}:
            raise ValueError(f"must contain {{text}} and no other field, got fields {sorted(fields)}; write {{{{ }}}} for a literal brace")
        return v

    @field_validator("context_template")
    @classmethod
    def _context_fields(cls, v: str) -> str:
        fields = template_fields(v)
        if "text" not in fields or fields - {"text", "index"}:
            raise ValueError(f"must contain {{text}} and may contain {{index}}, got fields {sorted(fields)}")
        return v

    @field_validator("context_pair_template")
    @classmethod
    def _pair_fields(cls, v: str | None) -> str | None:
        if v is not None and template_fields(v) != {"question", "answer"}:
            raise ValueError(f"must contain {{question}} and {{answer}} and no other field, got {sorted(template_fields(v))}")
        return v


class PromptFormatConfig(Strict):
    """A model's role markers. `{bos}` and `{eos}` stand for the tokenizer's own tokens."""

    name: str = Field("custom", description="the format's name, shown in the model card")
    system_prefix: str = Field("", description="before the system message")
    system_suffix: str = Field("\n\n", description="after the system message")
    system_in_first_input: bool = Field(False, description="put the system block inside the first user turn (Llama-2)")
    context_prefix: str = Field("", description="before each context")
    context_suffix: str = Field("\n", description="after each context")
    context_position: Literal["before_input", "after_input"] = Field(
        "before_input", description="where the contexts go in the user turn, relative to the input")
    input_prefix: str = Field("", description="before the user turn (the role marker)")
    input_suffix: str = Field("", description="after the user turn")
    response_prefix: str = Field("", description="masked: the cue before the answer")
    response_suffix: str = Field("", description="trained: what ends an answer")
    turn_separator: str = Field("", description="between an answer and the next user turn (few-shot examples, multi-turn chats)")
    stop: list[str] = Field(default_factory=list, description="stop strings for generation")


class ChatConfig(Strict):
    """Chat rows: ShareGPT role names, tool schemas, reasoning traces (docs/data.md#chat-data)."""

    roles: dict[str, str] = Field(
        default_factory=dict, description="ShareGPT `from` values -> roles (system, user, assistant, tool, function_call), "
                                          "added to the usual ones (human, gpt, observation, ...)")
    tools: list[dict[str, Any]] | str | None = Field(
        None, description="tool (function) schemas for every row without its own `tools` column: a list, or a JSON file "
                          "relative to this config")
    reasoning: Literal["train", "mask", "drop"] = Field(
        "train", description="an assistant turn's reasoning (reasoning_content, or a leading <think> block): train it, "
                             "keep it in the text but masked, or drop it before rendering")
    empty_think: Literal["mask", "train"] = Field(
        "mask", description="the empty <think></think> block some templates (Qwen3) insert in a turn without reasoning: "
                            "masked, as the template's non-thinking prompt writes it, or trained")
    thinking: Literal["auto", "on", "off"] = Field(
        "auto", description="prompts at inference: let the model think first (on) or not (off); auto: on when the "
                            "trained data had reasoning, resolved when the model is saved")


class DataConfig(Strict):
    """The data part, for `tunesmith prep`: where rows come from, how they become tokens, where they are written."""

    train: SourceConfig | None = Field(None, description="required by `tunesmith prep`")
    eval: SourceConfig | None = Field(None, description="a second source to evaluate on (or validation_split, not both)")
    validation_split: float | None = Field(
        None, gt=0, lt=1, description="hold out this share of train (rounded up) as the eval split, shuffled with `seed`")
    seed: int = Field(42, description="seed for validation_split and for training (TrainingArguments.seed unless set)")
    format: Literal["auto", "input", "prompt_response", "chat"] = Field(
        "auto", description="row format; auto detects it from the source's columns (from each row's, after a "
                            "preprocessing_fn): messages or conversations (ShareGPT) -> chat, input + response -> input, prompt + response (or "
                            "completion) -> prompt_response")
    columns: dict[str, str] = Field(default_factory=dict, description="canonical name -> your column name")
    preprocessing_fn: str | None = Field(None, description="module:function or path/to/file.py:function")
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how a row becomes text: system message, few-shot examples, templates")
    prompt_format: str | PromptFormatConfig = Field(
        "plain", description="the role markers: a built-in name (plain, user_assistant, alpaca, dolly, vicuna, llama2, chatml, "
                             "two_step, redpajama, together_llama2), chat_template (the tokenizer's own), or your own markers")
    chat: ChatConfig = Field(default_factory=ChatConfig, description="chat rows: ShareGPT roles, tools, reasoning")
    train_on_prompt: bool = Field(False, description="true: train on every token, the prompt included")
    assistant_turns: Literal["all", "last"] = Field("all", description="chat rows: train every assistant turn, or only the last")
    max_length: int = Field(2048, gt=1, description="the longest example in tokens, BOS and EOS included")
    packing: bool = Field(False, description="pack several examples per row (best-fit-decreasing); examples never attend to each other")
    batching: Literal["auto", "padded", "padding_free"] = Field(
        "auto", description="padding_free: each batch becomes one row with position_ids, attention per example; "
                            "auto: padding_free where the model's attention takes example boundaries, else padded")
    overlength: Literal["drop", "truncate", "error"] = Field(
        "drop", description="an example over max_length: drop it, truncate it (the prompt from the left after BOS, then the "
                            "answer's end), or stop with an error; drops and cuts are counted in prep_report.json")
    bad_rows: Literal["error", "skip"] = Field(
        "error", description="a malformed row: stop naming it, or skip it (counted, with row indices, in prep_report.json)")
    num_proc: int | None = Field(None, ge=1, description="processes for tokenization; default for 20k+ rows: one per two cores "
                                                         "(the tokenizer threads each batch)")
    output: str | None = Field(None, description="default: <output_dir>/data")
    output_layout: Literal["splits", "dataset"] = Field(
        "splits", description="splits: a DatasetDict (train, eval); dataset: the train split as one Dataset, as the "
                              "two-step workflow's dataprep writes it")
    writer: Literal["save_to_disk", "to_json", "to_parquet", "to_csv"] = Field(
        "save_to_disk", description="how `output` is written; to_json/to_parquet/to_csv write one file (dataset layout)")
    export: list[Literal["jsonl", "parquet"]] = Field(
        default_factory=list, description="also write each split as <split>.jsonl / <split>.parquet in the output folder")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        canonical = {"input", "context", "contexts", "prompt", "response", "completion", "messages", "conversations", "tools",
                     "chosen", "rejected", "label"}
        unknown = set(v) - canonical
        if unknown:
            raise ValueError(f"unknown canonical column(s) {sorted(unknown)}; use {sorted(canonical)} as keys")
        return v

    @model_validator(mode="after")
    def _one_eval(self) -> DataConfig:
        if self.eval is not None and self.validation_split is not None:
            raise ValueError("give either `eval` (a second source) or `validation_split`, not both")
        if self.writer != "save_to_disk" and self.output_layout != "dataset":
            raise ValueError(f"writer {self.writer} writes one file: set output_layout: dataset")
        if self.output_layout == "dataset" and (self.eval is not None or self.validation_split is not None):
            raise ValueError("output_layout dataset holds one split: prepare eval data with its own config")
        return self


class Config(Strict):
    """A whole run: the data part (`tunesmith prep`) and the training part (`tunesmith train`)."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="the run's name: outputs go to outputs/<name> unless output_dir is set")
    base_model: str = Field(description="Hub id, local folder, or .gguf file; the tokenizer comes from here")
    tokenizer: str | None = Field(None, description="tokenizer to use instead of base_model's")
    output_dir: str | None = Field(None, description="default: outputs/<name> in the working directory")
    data: DataConfig = Field(default_factory=DataConfig, description="the data part, read by `tunesmith prep`")
    train_data: str | None = Field(None, description="prepared data to train on; default: data.output")
    eval_data: str | None = Field(None, description="prepared eval data, when prepared separately")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(), description="how the model is loaded and trained")
    objective: ObjectiveConfig = Field(default_factory=lambda: ObjectiveConfig(),
                                       description="what training optimises: sft, or a preference objective (dpo, ipo, "
                                                   "simpo, orpo, kto); docs/preference.md")
    training: dict[str, Any] = Field(default_factory=dict, description="any transformers TrainingArguments field, checked "
                                                                      "before any work; tunesmith's defaults: docs/training.md")
    seed_compat: list[str] = Field(default_factory=list, exclude=True, description="notes on translated keys (two-step or llm-foundry files)")
    compat_source: str = Field("", exclude=True, description="the framework whose YAML was translated, '' for tunesmith's own")
    key_names: dict[str, str] = Field(default_factory=dict, exclude=True,
                                      description="translated configs: tunesmith key -> the key the user wrote, for messages")

    def user_key(self, key: str) -> str:
        """The name the user wrote for a tunesmith key (the same key for tunesmith's own configs)."""
        return self.key_names.get(key, key)

    def resolved_output_dir(self) -> str:
        return self.output_dir or f"outputs/{self.name}"

    def resolved_data_dir(self) -> str:
        return self.data.output or f"{self.resolved_output_dir()}/data"


from tunesmith.config.train_schema import ModelConfig, ObjectiveConfig  # noqa: E402  (train part lives in its own file)

Config.model_rebuild()
