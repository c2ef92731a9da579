"""Examples -> packed rows: several examples per row, best-fit-decreasing up to max_length.

`position_ids` restart at 0 for each example. With no attention mask and no KV cache,
transformers reads those restarts as sequence boundaries and builds a block-diagonal causal
mask (sdpa, eager; flash-attention varlen on GPU), so no example attends to another. The first
label of every example is -100: no token is trained to predict across a boundary.
"""
from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Sequence, Value

IGNORE = -100
PACKED_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")), "position_ids": Sequence(Value("int32")),
    "attention_mask": Sequence(Value("int8")), "seq_lengths": Sequence(Value("int32")), "full_text": Value("string"),
})


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each example (longest first) goes to the open row with the least room
    that still fits it. Returns the example indices of each row."""
    if any(n > capacity for n in lengths):
        raise ValueError("an example is longer than the row capacity")
    room_count = np.zeros(capacity + 1, dtype=np.int64)  # open rows by exact free room
    rows_with_room: dict[int, list[int]] = {}
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        need = lengths[i]
        candidates = np.flatnonzero(room_count[need:])
        if candidates.size:
            room = need + int(candidates[0])  # the tightest fit
            b = rows_with_room[room].pop()
            room_count[room] -= 1
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = room - need
        room_count[left] += 1
        rows_with_room.setdefault(left, []).append(b)
    return bins


def pack_split(ds: Dataset, max_length: int) -> Dataset:
    cols = {c: ds[c] for c in ("input_ids", "labels", "full_text")}
    lengths = [len(x) for x in cols["input_ids"]]
    bins = plan_bins(lengths, max_length)
    rows = {k: [] for k in PACKED_FEATURES}
    for members in bins:
        ids, labels, positions, seqs, texts = [], [], [], [], []
        for i in members:
            ids += cols["input_ids"][i]
            labels += [IGNORE] + list(cols["labels"][i][1:])  # the first token predicts nothing across a boundary
            positions += range(lengths[i])
            seqs.append(lengths[i])
            texts.append(cols["full_text"][i])
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["position_ids"].append(positions)
        rows["attention_mask"].append([1] * len(ids))
        rows["seq_lengths"].append(seqs)
        rows["full_text"].append("".join(texts))
    return Dataset.from_dict(rows, features=PACKED_FEATURES)


def packing_report(before: Dataset, after: Dataset, max_length: int) -> dict:
    tokens = sum(sum(s) for s in after["seq_lengths"])
    return {"examples": len(before), "rows": len(after), "fill": round(tokens / (len(after) * max_length), 4) if len(after) else 0.0}
