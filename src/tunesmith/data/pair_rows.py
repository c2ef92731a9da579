"""One batch of preference rows -> token columns of both sides plus the status columns the report
counts (the function `datasets.map` runs for pairs and unpaired rows; rows.py does SFT rows).

Pairs: chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels, chosen_text,
rejected_text. Unpaired (KTO): input_ids, labels, full_text, label. As in rows.py no row is
dropped here: `_status` names the reason and prepare.py filters after the report counts it.
`_prompt_tokens` is the prompt's length (shared by both sides), `_trained_tokens` the answers'
trained tokens (both sides together).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from datasets import Features, Sequence, Value

from tunesmith.data.pairs import PairRenderer, fit_row
from tunesmith.data.rows import OUTPUT_FEATURES, ROW, STATUS_COLUMNS, gc_paused
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE

_STATUS_FEATURES = {c: OUTPUT_FEATURES[c] for c in STATUS_COLUMNS}  # as rows.py writes them
PAIR_FEATURES = Features({
    "chosen_input_ids": Sequence(Value("int32")), "chosen_labels": Sequence(Value("int32")),
    "rejected_input_ids": Sequence(Value("int32")), "rejected_labels": Sequence(Value("int32")),
    "chosen_text": Value("string"), "rejected_text": Value("string"), **_STATUS_FEATURES,
})
UNPAIRED_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")), "full_text": Value("string"),
    "label": Value("bool"), **_STATUS_FEATURES,
})


def trained(labels: list[int]) -> int:
    return len(labels) - labels.count(IGNORE)


@dataclass
class PairProcessor:
    pairs: PairRenderer
    kind: str  # "pairs" or "unpaired"

    @property
    def features(self) -> Features:
        return PAIR_FEATURES if self.kind == "pairs" else UNPAIRED_FEATURES

    def __call__(self, batch: dict[str, list]) -> pa.Table:
        with gc_paused():
            return pa.Table.from_pydict(self.process(batch), schema=self.features.arrow_schema)

    def process(self, batch: dict[str, list]) -> dict[str, Any]:
        names = [k for k in batch if k != ROW]
        out = {name: [] for name in self.features}
        data = self.pairs.renderer.data
        for i, index in enumerate(batch[ROW]):
            row = {k: batch[k][i] for k in names}
            status = {ROW: index, "_part": 0, "_cut": "", "_error": "", "_trailing_removed": 0, "_reasoning_turns": 0}
            try:
                fitted = fit_row(self.pairs, row, index, self.kind)
                if self.kind == "pairs":
                    (enc_c, enc_r), (text_c, text_r) = fitted.sides, fitted.texts
                    cols = {"chosen_input_ids": enc_c.input_ids, "chosen_labels": enc_c.labels,
                            "rejected_input_ids": enc_r.input_ids, "rejected_labels": enc_r.labels,
                            "chosen_text": text_c, "rejected_text": text_r}
                else:
                    (enc,), (text,) = fitted.sides, fitted.texts
                    cols = {"input_ids": enc.input_ids, "labels": enc.labels, "full_text": text, "label": fitted.label}
                first = fitted.sides[0]
                status.update(_status=fitted.drop or "ok", _cut=first.cut,
                              _prompt_tokens=len(first.input_ids) - trained(first.labels),
                              _trained_tokens=sum(trained(e.labels) for e in fitted.sides))
            except DataError as e:
                if data.bad_rows == "error":
                    raise
                cols = {k: ([] if isinstance(f, Sequence) else ("" if f.dtype == "string" else False))
                        for k, f in self.features.items() if k not in STATUS_COLUMNS}
                status.update(_status="bad_row", _error=str(e), _prompt_tokens=0, _trained_tokens=0)
            for k, v in {**cols, **status}.items():
                out[k].append(v)
        return out
