"""One batch of raw rows -> tokenized rows plus status columns (the function `datasets.map` runs).
Each row is rendered by data/render.py, the path inference renders its prompts with.

Rows are never dropped here: a row that cannot be used gets `_status` set to the reason, so
the report can count every drop and cut before prepare.py filters them out.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from datasets import Features, Sequence, Value
from transformers import PreTrainedTokenizerBase

from tunesmith.config.schema import DataConfig
from tunesmith.data.examples import detect_format
from tunesmith.data.prompts import Segment
from tunesmith.data.render import Renderer, make_renderer
from tunesmith.data.tokenize import Specials, encode_batch, fit_length
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE, load_tokenizer

ROW = "_row"  # the row's index in its source, added before any split or filter
# _part: the example's place among those its row made (0, or 1, 2, ... after it where a chat
# template rewrites history and a row becomes one example per assistant turn).
STATUS_COLUMNS = [ROW, "_part", "_status", "_cut", "_error", "_prompt_tokens", "_trained_tokens", "_trailing_removed",
                  "_reasoning_turns"]
OUTPUT_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
    "attention_mask": Sequence(Value("int8")), "full_text": Value("string"),
    ROW: Value("int64"), "_part": Value("int32"), "_status": Value("string"), "_cut": Value("string"), "_error": Value("string"),
    "_prompt_tokens": Value("int32"), "_trained_tokens": Value("int32"), "_trailing_removed": Value("int32"),
    "_reasoning_turns": Value("int32"),
})


@dataclass
class RowProcessor:
    renderer: Renderer  # what the rows are rendered with (make_renderer); its data config sets the length rules
    row_format: str  # "input", "prompt_response", "chat", or "" to detect per row

    @property
    def data(self) -> DataConfig:
        return self.renderer.data

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.renderer.tokenizer

    @property
    def specials(self) -> Specials:
        return self.renderer.specials

    def render(self, row: dict[str, Any], index: int) -> tuple[list[list[Segment]], dict[str, int]]:
        """One raw row -> the segments of each example it makes (raises DataError naming the row)."""
        return self.renderer.render(row, index, self.row_format)

    def __call__(self, batch: dict[str, list]) -> pa.Table:
        with gc_paused():
            return pa.Table.from_pydict(self.process(batch), schema=OUTPUT_SCHEMA)

    def process(self, batch: dict[str, list]) -> dict[str, Any]:
        """The output columns of one batch; the token columns as Arrow arrays."""
        names = [k for k in batch if k != ROW]
        n = len(batch[ROW])
        rendered: list[list[Segment]] = []
        status = {c: [] for c in STATUS_COLUMNS}
        for i in range(n):
            index = batch[ROW][i]
            try:
                examples, facts = self.render({k: batch[k][i] for k in names}, index)
                error = ""
            except DataError as e:
                if self.data.bad_rows == "error":
                    raise
                examples, facts, error = [[]], {}, str(e)
            for part, segments in enumerate(examples):
                rendered.append(segments)
                status[ROW].append(index)
                status["_part"].append(part)
                status["_error"].append(error)
                status["_trailing_removed"].append(facts.get("trailing_removed", 0) if part == 0 else 0)
                status["_reasoning_turns"].append(facts.get("reasoning_turns", 0) if part == 0 else 0)
        encoded = encode_batch(rendered, self.tokenizer, self.specials)
        out = {"input_ids": [], "labels": [], "full_text": []}
        for i, ((ids, labels), segments) in enumerate(zip(encoded, rendered)):
            if status["_error"][i]:
                enc_status, cut, ids, labels = "bad_row", "", [], []
            else:
                enc = fit_length(ids, labels, self.data.max_length, self.data.overlength, self.specials, status[ROW][i])
                ids, labels, cut = enc.input_ids, enc.labels, enc.cut
                enc_status = enc.drop or "ok"
            trained = len(labels) - labels.count(IGNORE)  # list.count runs in C
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["full_text"].append(self.text_of(segments, ids))
            status["_status"].append(enc_status)
            status["_cut"].append(cut)
            status["_prompt_tokens"].append(len(ids) - trained)
            status["_trained_tokens"].append(trained)
        offsets = row_offsets(out["input_ids"])
        token_columns = {
            "input_ids": int_lists(out["input_ids"], offsets, np.int32),
            "labels": int_lists(out["labels"], offsets, np.int32),
            "attention_mask": pa.ListArray.from_arrays(offsets, np.ones(offsets[-1].as_py(), np.int8)),
        }
        return {**token_columns, "full_text": out["full_text"], **status}

    def text_of(self, segments: list[Segment], ids: list[int]) -> str:
        # The text the ids came from, with the BOS/EOS the tokenizer rules added.
        text = "".join(t for t, _ in segments)
        if ids and self.specials.adds_bos and not text.startswith(self.specials.bos_text):
            text = self.specials.bos_text + text
        if ids and ids[-1] == self.specials.eos_id and not text.rstrip().endswith(self.specials.eos_text):
            text += self.specials.eos_text
        return text


OUTPUT_SCHEMA = OUTPUT_FEATURES.arrow_schema


# The token columns go to Arrow through one flat numpy array per column: building millions of
# small Python objects for pa.array (and the cyclic GC passes they trigger) was ~20% of prep.
def row_offsets(rows: list[list[int]]) -> pa.Int32Array:
    offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum(np.fromiter(map(len, rows), np.int32, count=len(rows)), out=offsets[1:])
    return pa.array(offsets)


def int_lists(rows: list[list[int]], offsets: pa.Int32Array, dtype) -> pa.ListArray:
    values = np.fromiter(chain.from_iterable(rows), dtype, count=offsets[-1].as_py())
    return pa.ListArray.from_arrays(offsets, values)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while a batch is built: it makes no reference cycles, and the collector's
    passes over every new list cost more than the rest of the Python work."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def render_setup(cfg, tokenizer: PreTrainedTokenizerBase | None = None) -> Renderer:
    """The config's renderer, checked up front (format, chat template, preprocessing function);
    loads the tokenizer unless one is given."""
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model, cfg.model.trust_remote_code)
    return make_renderer(cfg.data, tokenizer)


def renamed_columns(columns: list[str], renames: dict[str, str]) -> set[str]:
    """A source's columns as rows have them after data.columns."""
    columns = [c for c in columns if c != ROW]
    return {k for k in columns if k not in renames.values()} | {k for k, v in renames.items() if v in columns}


def dataset_format(declared: str, columns: list[str], renames: dict[str, str], has_preprocessing: bool) -> str:
    """The row format for a whole source; '' means detect per row (after a preprocessing function)."""
    if declared != "auto":
        return declared
    if has_preprocessing:
        return ""
    found = detect_format(renamed_columns(columns, renames))
    if not found:
        raise DataError(f"cannot tell the data format from its columns {sorted(c for c in columns if c != ROW)}",
                        "rows need input+response, prompt+response/completion, or messages; map other "
                        "names with data.columns (e.g. {prompt: question, response: answer}) or data.preprocessing_fn")
    return found
