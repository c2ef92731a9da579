"""Generate with the training template: the prompt's token ids come from the same render and
tokenize path as the masked part of a training row, so the model sees at inference exactly
what it learned from. Stops at EOS and at the format's stop strings; batched, left-padded."""
from __future__ import annotations

from typing import Any

from tunesmith.config.schema import Config
from tunesmith.data.chat_template import render_with_template
from tunesmith.data.examples import apply_preprocessing, detect_format, normalize, rename_columns
from tunesmith.data.prompts import CHAT_TEMPLATE, example_to_turns, render_turns, select_trained
from tunesmith.data.rows import render_setup
from tunesmith.data.tokenize import encode_batch
from tunesmith.infer.batching import generate_ids

PLACEHOLDER = "\x00answer\x00"  # stands in for the answer; only the text before it is used
PLAIN = "_plain_text"  # marks a prompt read as plain text (no preprocessing function)


class PromptEncoder:
    """Rows (any format the data step reads) -> prompt token ids, and the expected answer if present."""

    def __init__(self, cfg: Config, tokenizer):
        self.cfg = cfg
        self.tokenizer, self.specials, self.fmt, self.preprocess = render_setup(cfg, tokenizer)

    def example(self, row: dict[str, Any], index: int = 0) -> dict:
        if self.preprocess is not None:
            row = apply_preprocessing(row, self.preprocess, self.cfg.data.preprocessing_fn, index)
        row = rename_columns(row, self.cfg.data.columns)
        if "messages" in row and row["messages"] and row["messages"][-1]["role"] != "assistant":
            row = {**row, "messages": [*row["messages"], {"role": "assistant", "content": PLACEHOLDER}]}
        for key in ("response", "completion"):
            if key in row and not row[key]:
                row = {**row, key: PLACEHOLDER}
        if "prompt" in row and not any(k in row for k in ("response", "completion")):
            row = {**row, "response": PLACEHOLDER}
        if "input" in row and "response" not in row:
            row = {**row, "response": PLACEHOLDER}
        fmt = self.cfg.data.format if self.cfg.data.format != "auto" else detect_format([k for k, v in row.items() if v is not None])
        return normalize(row, fmt, index)

    def segments(self, example: dict, index: int = 0) -> list:
        """The example rendered as in training (same assistant_turns), prompt never trained."""
        turns = select_trained(example_to_turns(example, self.cfg.data.prompt), self.cfg.data.assistant_turns)
        if self.fmt == CHAT_TEMPLATE:
            return render_with_template(turns, self.tokenizer, False, index)
        return render_turns(turns, self.fmt, False)

    def reference(self, row: dict[str, Any], index: int = 0) -> str | None:
        """The row's expected answer (None when it has none), without tokenizing anything."""
        return answer_of(self.example(row, index))

    def encode(self, row: dict[str, Any], index: int = 0) -> tuple[list[int], str | None]:
        example = self.example(row, index)
        segments = self.segments(example, index)
        last_trained = max(i for i, (_, trained) in enumerate(segments) if trained)
        # The segments before the answer, tokenized exactly as in training (each on its own, same
        # BOS rule); no EOS, since the answer follows.
        (ids, _), = encode_batch([segments[:last_trained]], self.tokenizer, self.specials, end_with_eos=False)
        return ids, answer_of(example)

    @property
    def stop_strings(self) -> list[str]:
        return [] if isinstance(self.fmt, str) else [s for s in self.fmt.stop if s]


def answer_of(example: dict) -> str | None:
    answer = example["response"] if example["kind"] == "input" else example["messages"][-1]["content"]
    return None if answer == PLACEHOLDER else answer


def generate(model, tokenizer, encoder: PromptEncoder, rows: list[dict], max_new_tokens: int = 64,
             batch_size: int = 16, show_progress: bool = False, **gen_kwargs) -> list[str]:
    """Greedy by default, batched by prompt length; the answers in the rows' order, stop strings removed."""
    prompts = [encoder.encode(r, i)[0] for i, r in enumerate(rows)]
    return decode_answers(tokenizer, generate_ids(model, tokenizer, prompts, encoder.stop_strings, max_new_tokens,
                                                  batch_size, show_progress, **gen_kwargs), encoder.stop_strings)


def decode_answers(tokenizer, answers: list[list[int]], stop_strings: list[str]) -> list[str]:
    return [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop_strings) for ids in answers]


def cut_at_stop(text: str, stops: list[str]) -> str:
    for s in stops:
        if s in text:
            text = text[:text.index(s)]
    return text


def read_prompts(source: str) -> list[dict]:
    """One prompt per line: a JSON object (a row in any data format) or plain text (the user's input)."""
    import json
    import sys

    from tunesmith.errors import DataError

    lines = sys.stdin.read().splitlines() if source == "-" else open(source, encoding="utf-8").read().splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: line {lineno} is not valid JSON: {e.msg}") from None
        else:
            rows.append({"prompt": line.replace("\\n", "\n"), PLAIN: True})
    return rows


def run_generate(cfg: Config, model_path: str | None, prompts: str, max_new_tokens: int,
                 batch_size: int = 16) -> list[str]:
    """JSON rows go through the data step's preprocessing; plain lines are already prompts. All
    prompts are generated together, batched by length; answers are printed in the input's order."""
    import copy
    import json

    from tunesmith.infer.load import load_for_inference

    rows = read_prompts(prompts)
    model, tokenizer = load_for_inference(cfg, model_path)
    encoder = PromptEncoder(cfg, tokenizer)
    plain_encoder = copy.copy(encoder)
    plain_encoder.preprocess = None
    chat = cfg.data.prompt_format == CHAT_TEMPLATE or cfg.data.format == "chat"
    ids = []
    for i, row in enumerate(rows):
        if row.pop(PLAIN, False):
            row = {"messages": [{"role": "user", "content": row["prompt"]}]} if chat else row
            ids.append(plain_encoder.encode(row, i)[0])
        else:
            ids.append(encoder.encode(row, i)[0])
    stop = encoder.stop_strings
    answers = decode_answers(tokenizer, generate_ids(model, tokenizer, ids, stop, max_new_tokens, batch_size,
                                                     show_progress=len(ids) > 1), stop)
    for answer in answers:
        print(json.dumps({"answer": answer}))
    return answers
