"""One rendering path: a row (any format the data step reads) -> normalized example -> turns ->
text segments (text, trained?) -> token ids.

Prep, preview and check render training rows with it (rows.py adds batching, the length policy
and the status columns); eval, generate, chat and the Ollama export render prompts with it. A
prompt is the training row's text up to the answer, tokenized segment by segment as in training,
so the model is prompted with exactly the ids it learned to continue.

What a Renderer reads from its DataConfig is the prompt settings (prompt_settings.RENDER_KEYS),
which are saved with a trained model: it renders the same with the config or without it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from collections.abc import Callable

from transformers import PreTrainedTokenizerBase

from tunesmith.config.schema import DataConfig, PromptFormatConfig
from tunesmith.data.chat_template import Template, check_has_template, render_with_template
from tunesmith.data.conversations import normalize_tools, raw_messages
from tunesmith.data.examples import apply_preprocessing, detect_format, normalize, rename_columns
from tunesmith.data.prompts import CHAT_TEMPLATE, Segment, example_to_turns, render_turns, resolve_format, select_trained
from tunesmith.data.sources import import_callable
from tunesmith.data.tokenize import Specials, encode_batch, specials_of
from tunesmith.errors import ConfigError, DataError

PLACEHOLDER = "\x00answer\x00"  # stands in for a prompt's missing answer; only the text before it is used


@dataclass
class Renderer:
    """Everything rendering needs, checked once (make_renderer); rows.py adds batches and status columns."""

    data: DataConfig
    tokenizer: PreTrainedTokenizerBase
    specials: Specials
    fmt: PromptFormatConfig | str  # resolved ({bos}/{eos} filled), or CHAT_TEMPLATE
    preprocess: Callable | None = None
    template: Template | None = None  # the tokenizer's chat template, when fmt is CHAT_TEMPLATE
    tools: list[dict] | None = None  # data.chat.tools, normalised once: for rows without their own

    def example(self, row: dict[str, Any], index: int = 0, row_format: str = "", prompt: bool = False) -> dict:
        """A raw row -> its normalized example (raises DataError naming the row when malformed).
        `row_format` "" detects the format from the row; `prompt`: the row may lack its answer."""
        if self.preprocess is not None:
            row = apply_preprocessing(row, self.preprocess, self.data.preprocessing_fn, index)
        row = rename_columns(row, self.data.columns)
        if prompt:
            if row.get("messages") is None and isinstance(row.get("conversations"), (list, tuple)):
                row = {**row, "messages": raw_messages(row, self.data.chat.roles, index), "conversations": None}
            # Thinking first only where reasoning was trained: a masked one is not the model's to write.
            thinking = self.data.chat.thinking == "on" and self.data.chat.reasoning == "train"
            row = with_answer_placeholder(row, thinking=thinking)
        return normalize(row, row_format or detect_format([k for k, v in row.items() if v is not None]), index, self.data.chat,
                         prompt, self.tools)

    def examples(self, example: dict, index: int = 0, train_on_prompt: bool = False) -> list[list[Segment]]:
        """A normalized example -> the segments of each training example it makes: one, or one per
        trained assistant turn where the chat template rewrites history (chat_template.py)."""
        turns = select_trained(example_to_turns(example, self.data.prompt), self.data.assistant_turns)
        chat, tools = self.data.chat, example.get("tools")
        if self.template is not None:
            return render_with_template(turns, self.template, tools, chat.empty_think, chat.reasoning, train_on_prompt, index)
        return [render_turns(turns, self.fmt, train_on_prompt, tools, chat.reasoning)]

    def segments(self, example: dict, index: int = 0, train_on_prompt: bool = False) -> list[Segment]:
        """The example's last training example: for a prompt, the one that ends with the answer. (Every
        turn is rendered as training renders it: each answer is its own segment, tokenized on its
        own, so the prompt's ids are the training row's.)"""
        return self.examples(example, index, train_on_prompt)[-1]

    def render(self, row: dict[str, Any], index: int, row_format: str = "") -> tuple[list[list[Segment]], dict[str, int]]:
        """A training row -> (the segments of each example it makes, facts the report counts:
        trailing turns removed, assistant turns with reasoning)."""
        example = self.example(row, index, row_format)
        facts = {"trailing_removed": example.get("trailing_removed", 0), "reasoning_turns": example.get("reasoning_turns", 0)}
        return self.examples(example, index, self.data.train_on_prompt), facts

    def prompt(self, row: dict[str, Any], index: int = 0) -> tuple[list[int], str | None]:
        """A row -> (the ids generation starts from, the row's own answer or None)."""
        example = self.example(row, index, self.declared_format, prompt=True)
        segments = self.segments(example, index)  # the prompt is never trained, so it ends where the answer starts
        last_trained = max(i for i, (_, trained) in enumerate(segments) if trained)
        # No EOS: the answer follows.
        (ids, _), = encode_batch([segments[:last_trained]], self.tokenizer, self.specials, end_with_eos=False)
        return ids, answer_of(example)

    def reference(self, row: dict[str, Any], index: int = 0) -> str | None:
        """The row's expected answer (None when it has none), without tokenizing anything."""
        return answer_of(self.example(row, index, self.declared_format, prompt=True))

    def typed_row(self, text: str) -> dict:
        """A prompt typed as plain text -> the row it stands for (a user turn in chat formats)."""
        chat = self.data.prompt_format == CHAT_TEMPLATE or self.data.format == "chat"
        return {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}

    def without_preprocessing(self) -> Renderer:
        """For text that is already a prompt (typed lines, chat): the preprocessing function reads raw rows."""
        return replace(self, preprocess=None)

    def chat_choices(self, columns: list[str]) -> list[str]:
        """What prep says it does with chat rows of these (renamed) columns, one line a choice."""
        chat, cols = self.data.chat, set(columns)
        shape = "OpenAI `messages`" if "messages" in cols else "ShareGPT `conversations` (from/value; roles: data.chat.roles)"
        tools = ("the `tools` column, per row" if "tools" in cols else
                 f"data.chat.tools ({len(chat.tools)} schemas) for every row" if chat.tools else "none")
        lines = [f"chat rows: {shape}; tools: {tools}; reasoning: {chat.reasoning}; "
                 f"assistant turns trained: {self.data.assistant_turns}"]
        t = self.template
        if t is None:
            lines.append(f"format {self.fmt.name}: tools listed in the system turn (<tools>), calls written as "
                         "<tool_call> JSON, results as <tool_response>, reasoning as <think>")
            return lines
        yes = {True: "yes", False: "no (rows that need it are refused)"}
        lines.append(f"chat template: renders tool calls: {yes[t.renders_tool_calls]}; tool schemas: {yes[t.renders_tools]}; "
                     "reasoning: " + ("as reasoning_content" if t.renders_reasoning else "written into the content as <think>"))
        if t.thinking_switch:
            lines.append("chat template has a thinking switch (enable_thinking): a turn without reasoning is prompted "
                         f"with it off, its empty <think></think> {'masked' if chat.empty_think == 'mask' else 'trained'}")
        lines.append("turns the template renders differently once later turns follow (it rewrites history) "
                     "become one example per assistant turn, rendered as inference renders it")
        return lines

    @property
    def declared_format(self) -> str:
        return "" if self.data.format == "auto" else self.data.format

    @property
    def stop_strings(self) -> list[str]:
        return [] if isinstance(self.fmt, str) else [s for s in self.fmt.stop if s]

    @property
    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and the chat template's end-of-turn token."""
        ids = [self.specials.eos_id]
        if self.specials.end_of_turn:
            ids.append(self.tokenizer.convert_tokens_to_ids(self.specials.end_of_turn))
        return list(dict.fromkeys(i for i in ids if i is not None))


def make_renderer(data: DataConfig, tokenizer: PreTrainedTokenizerBase, preprocessing: bool = True,
                  where: str = "data.preprocessing_fn") -> Renderer:
    """What rendering needs, checked up front: the format, the chat template, the preprocessing function."""
    specials = specials_of(tokenizer)
    fmt = resolve_format(data.prompt_format, specials.bos_text, specials.eos_text)
    template = None
    if fmt == CHAT_TEMPLATE:
        check_has_template(tokenizer)
        template = Template(tokenizer)
        specials = replace(specials, end_of_turn=template.end_of_turn)
    preprocess = import_callable(data.preprocessing_fn, where) if preprocessing and data.preprocessing_fn else None
    try:
        tools = normalize_tools(data.chat.tools, -1)
    except DataError as e:  # the config's list, not a row's
        raise ConfigError(f"data.chat.tools: {e.message.removeprefix('row -1: ')}", e.hint) from None
    return Renderer(data, tokenizer, specials, fmt, preprocess, template, tools)


def with_answer_placeholder(row: dict[str, Any], thinking: bool = False) -> dict[str, Any]:
    """A row without its answer (a prompt) made whole, so it renders like a training row.
    `thinking`: the answer has reasoning, so the prompt stops before it (the model thinks first)."""
    messages = row.get("messages")
    if isinstance(messages, (list, tuple)) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") != "assistant":
        answer = {"role": "assistant", "content": PLACEHOLDER, **({"reasoning_content": PLACEHOLDER} if thinking else {})}
        row = {**row, "messages": [*messages, answer]}
    for key in ("response", "completion"):
        if key in row and not row[key]:
            row = {**row, key: PLACEHOLDER}
    if "prompt" in row and not any(k in row for k in ("response", "completion")):
        row = {**row, "response": PLACEHOLDER}
    if "input" in row and "response" not in row:
        row = {**row, "response": PLACEHOLDER}
    return row


def answer_of(example: dict) -> str | None:
    answer = example["response"] if example["kind"] == "input" else example["messages"][-1]["content"]
    return None if answer == PLACEHOLDER else answer
