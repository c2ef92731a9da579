"""Preference rows -> the two sides of each pair (or one side and its label, for KTO), each
rendered by the one rendering path (render.py) as an SFT row would be, masked everywhere but the
answer, and kept together.

Row shapes (after data.columns and a preprocessing function):
- pairs: `prompt` + `chosen` + `rejected`, each a string; or `chosen`/`rejected` as message lists
  (a shared prefix of messages is the prompt), or with a `prompt` message list and the answers as
  strings or assistant message lists;
- unpaired (KTO): `prompt` + `completion` + `label` (true: desirable), in the same forms.

A pair is one unit under the length policy: both sides are dropped, or cut by the same prompt
tokens (so their prompts stay equal) and then each answer at its end. Sides that render the same
ids are dropped as `identical_sides` (counted); an empty side is a row error.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from tunesmith.data.examples import apply_preprocessing, rename_columns
from tunesmith.data.render import Renderer
from tunesmith.data.tokenize import Encoded, encode_batch, fit_length
from tunesmith.errors import ConfigError, row_error
from tunesmith.hf import IGNORE

SIDES = ("chosen", "rejected")


def pair_kind(columns: set[str]) -> str:
    """'pairs', 'unpaired' or '' for the (renamed) columns of a source."""
    if {"chosen", "rejected"} <= columns:
        return "pairs"
    if {"completion", "label"} <= columns and "prompt" in columns:
        return "unpaired"
    return ""


@dataclass
class Side:
    ids: list[int]
    labels: list[int]
    text: str


@dataclass
class PairRenderer:
    """Renders preference rows: the preprocessing function and data.columns apply once, to the
    preference row; each side is then rendered as an SFT row (by a Renderer that trains the last
    assistant turn only and has neither, since the side's row is already in canonical form)."""

    renderer: Renderer

    def __post_init__(self):
        self.preprocess, self.columns = self.renderer.preprocess, self.renderer.data.columns
        self.preprocessing_fn = self.renderer.data.preprocessing_fn
        data = self.renderer.data.model_copy(update={"assistant_turns": "last", "train_on_prompt": False, "columns": {}})
        self.renderer = replace(self.renderer, data=data, preprocess=None)

    def row(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        """The preference row in canonical names (prompt, chosen, rejected, completion, label, tools)."""
        if self.preprocess is not None:
            raw = apply_preprocessing(raw, self.preprocess, self.preprocessing_fn, index)
        return rename_columns(raw, self.columns)

    def pair(self, raw: dict[str, Any], index: int) -> tuple[Side, Side]:
        """A pair row -> (chosen, rejected), with equal prompts (raises DataError naming the row)."""
        row = self.row(raw, index)
        for key in SIDES:
            _check_answer(row, key, index)
        rows = sft_rows(row.get("prompt"), row["chosen"], row["rejected"], index)
        chosen, rejected = self.sides(rows, row, index)
        prompt_c, prompt_r = _prompt_ids(chosen), _prompt_ids(rejected)
        if prompt_c != prompt_r:
            raise row_error(index, "chosen and rejected render different prompts (their messages before the "
                                   "answers differ)", "give both sides the same conversation up to the answer, or a `prompt`")
        return chosen, rejected

    def single(self, raw: dict[str, Any], index: int) -> tuple[Side, bool]:
        """An unpaired row -> (its side, whether it is desirable)."""
        row = self.row(raw, index)
        _check_answer(row, "completion", index)
        label = row.get("label")
        if not isinstance(label, bool):
            raise row_error(index, f"field 'label' must be true or false, got {label!r}",
                            "label: true marks a desirable completion, false an undesirable one")
        (side,) = self.sides(sft_rows(row.get("prompt"), row["completion"], None, index)[:1], row, index)
        return side, label

    def sides(self, rows: list[dict], original: dict, index: int) -> list[Side]:
        extra = {k: original[k] for k in ("tools",) if original.get(k) is not None}
        segments = []
        for r, name in zip(rows, ("chosen", "rejected") if len(rows) == 2 else ("completion",)):
            examples, facts = self.renderer.render({**r, **extra}, index)
            if facts.get("trailing_removed"):  # the answer must be the side's last turn
                raise row_error(index, f"{name} ends with turns after its last assistant answer",
                                "end each side with the answer being compared")
            segments.append(examples[-1])  # the example that ends with the answer
        encoded = encode_batch(segments, self.renderer.tokenizer, self.renderer.specials)
        return [Side(ids, labels, "".join(t for t, _ in segs)) for (ids, labels), segs in zip(encoded, segments)]


def sft_rows(prompt, chosen, rejected, index: int) -> list[dict]:
    """The SFT row each side stands for: prompt + answer, as text or as messages."""
    answers = [a for a in (chosen, rejected) if a is not None]
    if all(isinstance(a, str) for a in answers) and isinstance(prompt, str):
        return [{"prompt": prompt, "response": a} for a in answers]
    if prompt is None or isinstance(prompt, str) and not prompt:
        if not all(isinstance(a, (list, tuple)) for a in answers):
            raise row_error(index, "has answers as text but no `prompt`",
                            "add a prompt column, or give chosen/rejected as message lists sharing the prompt's messages")
        return [{_list_key(a): list(a)} for a in answers]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, (list, tuple)):
        raise row_error(index, f"field 'prompt' must be text or a message list, got {type(prompt).__name__}")
    sharegpt = _list_key(prompt) == "conversations"
    return [{_list_key(prompt): [*prompt, *_as_messages(a, sharegpt)]} for a in answers]


def _list_key(messages) -> str:
    """ShareGPT turns ({from, value}) render as `conversations`, OpenAI ones as `messages`."""
    first = next(iter(messages), None)
    return "conversations" if isinstance(first, dict) and "from" in first and "role" not in first else "messages"


def _as_messages(answer, sharegpt: bool = False) -> list[dict]:
    if isinstance(answer, str):
        return [{"from": "gpt", "value": answer}] if sharegpt else [{"role": "assistant", "content": answer}]
    return list(answer)


def _check_answer(row: dict, key: str, index: int) -> None:
    value = row.get(key)
    empty = value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple)) and not value)
    if empty:
        raise row_error(index, f"field {key!r} is {'missing' if value is None else 'empty'}: a preference row needs "
                               "both answers", "fix or remove the row, or set data.bad_rows: skip to count and skip such rows")
    if not isinstance(value, (str, list, tuple)):
        raise row_error(index, f"field {key!r} must be text or a message list, got {type(value).__name__}")


def _prompt_ids(side: Side) -> list[int]:
    first = next((i for i, label in enumerate(side.labels) if label != IGNORE), len(side.labels))
    return side.ids[:first]


@dataclass
class FittedRow:
    """A preference row as prep keeps it: its sides after the length policy (chosen, rejected; or
    the one side of an unpaired row), their texts, the drop reason ('' when kept) and, unpaired,
    whether the answer is desirable."""

    sides: list[Encoded]
    texts: list[str]
    drop: str
    label: bool | None = None


def fit_row(pairs: PairRenderer, raw: dict[str, Any], index: int, kind: str, policy: str | None = None) -> FittedRow:
    """A raw pair or unpaired row -> its fitted sides (raises DataError naming the row). `policy`:
    data.overlength unless given (preview shows what drop or truncate do without stopping)."""
    d = pairs.renderer.data
    policy = policy or d.overlength
    if kind == "pairs":
        chosen, rejected = pairs.pair(raw, index)
        enc_c, enc_r, drop = fit_pair(chosen, rejected, d.max_length, policy, pairs.renderer, index)
        return FittedRow([enc_c, enc_r], [chosen.text, rejected.text], drop)
    side, label = pairs.single(raw, index)
    enc = fit_length(side.ids, side.labels, d.max_length, policy, pairs.renderer.specials, index)
    return FittedRow([enc], [side.text], enc.drop, label)


def fit_pair(chosen: Side, rejected: Side, max_length: int, policy: str, renderer: Renderer, index: int) -> tuple[Encoded, Encoded, str]:
    """The length policy applied to a pair as one unit -> (chosen, rejected, drop reason or '')."""
    longest = max(len(chosen.ids), len(rejected.ids))
    sp = renderer.specials
    if longest > max_length:
        if policy == "error":
            raise row_error(index, f"has a side {longest} tokens long, over data.max_length={max_length}",
                            "raise data.max_length, or set data.overlength to drop or truncate")
        if policy == "drop":
            return Encoded(chosen.ids, chosen.labels), Encoded(rejected.ids, rejected.labels), "too_long"
        chosen, rejected, cut = _cut_pair(chosen, rejected, max_length, sp)
        enc_c, enc_r = Encoded(chosen.ids, chosen.labels, cut=cut), Encoded(rejected.ids, rejected.labels, cut=cut)
    else:
        enc_c, enc_r = fit_length(chosen.ids, chosen.labels, max_length, policy, sp, index), \
            fit_length(rejected.ids, rejected.labels, max_length, policy, sp, index)
    if any(e.labels.count(IGNORE) == len(e.labels) for e in (enc_c, enc_r)):
        return enc_c, enc_r, "no_trained_tokens"
    if enc_c.input_ids == enc_r.input_ids:
        return enc_c, enc_r, "identical_sides"
    return enc_c, enc_r, ""


def _cut_pair(chosen: Side, rejected: Side, max_length: int, sp) -> tuple[Side, Side, str]:
    """The same prompt tokens off both sides (from the left, after BOS), then each answer's end."""
    keep_bos = 1 if sp.adds_bos and chosen.ids and chosen.ids[0] == sp.bos_id else 0
    prompt_len = len(_prompt_ids(chosen))
    excess = max(len(chosen.ids), len(rejected.ids)) - max_length
    cut_prompt = min(excess, max(prompt_len - keep_bos, 0))
    out, answer_cut = [], False
    for side in (chosen, rejected):
        ids = side.ids[:keep_bos] + side.ids[keep_bos + cut_prompt:]
        labels = side.labels[:keep_bos] + side.labels[keep_bos + cut_prompt:]
        answer_cut |= len(ids) > max_length
        out.append(Side(ids[:max_length], labels[:max_length], side.text))
    cut = "prompt+response" if cut_prompt and answer_cut else ("response" if answer_cut else "prompt")
    return out[0], out[1], cut


def with_mismatched_rows(ds, max_length: int):
    """Unpaired (KTO) rows + `kl_input_ids`/`kl_labels`: row i's prompt with the answer of the next
    row (in file order, wrapping around) whose prompt differs, cut to max_length at the answer's
    end. KTO's KL estimate is the log-ratio of such mismatched rows; fixed here, at prep, so a
    reference for them can be computed once like the others."""
    ids, labels = ds["input_ids"], ds["labels"]
    starts = [next((k for k, x in enumerate(lab) if x != IGNORE), len(lab)) for lab in labels]
    prompts = [tuple(row[:start]) for row, start in zip(ids, starts)]
    kl_ids, kl_labels = [], []
    for i in range(len(ids)):
        j = next((j for j in ((i + k) % len(ids) for k in range(1, len(ids))) if prompts[j] != prompts[i]), (i + 1) % len(ids))
        # row i fits max_length with at least one answer token, so its prompt leaves room for one here
        kl_ids.append((ids[i][:starts[i]] + ids[j][starts[j]:])[:max_length])
        kl_labels.append((labels[i][:starts[i]] + labels[j][starts[j]:])[:max_length])
    return ds.add_column("kl_input_ids", kl_ids).add_column("kl_labels", kl_labels)


def check_pair_config(data, kind: str) -> None:
    """Settings that have no meaning for preference rows, refused by name."""
    if data.packing:
        raise ConfigError(f"data.packing: {kind} rows are not packed (the sides of a batch run as one padding-free row)",
                          "remove data.packing")
    if data.train_on_prompt:
        raise ConfigError(f"data.train_on_prompt: {kind} rows compare answers; the prompt is never scored",
                          "remove data.train_on_prompt")
