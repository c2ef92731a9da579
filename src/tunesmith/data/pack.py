"""Examples -> packed rows: several examples per row, best-fit-decreasing up to max_length.

`position_ids` restart at 0 for each example. With no attention mask and no KV cache,
transformers reads those restarts as sequence boundaries and builds a block-diagonal causal
mask (sdpa, eager; flash-attention varlen on GPU), so no example attends to another. The first
label of every example is -100: no token is trained to predict across a boundary.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value
from datasets.arrow_writer import ArrowWriter
from datasets.table import InMemoryTable

from tunesmith.hf import IGNORE

PACKED_FEATURES = Features({
    "input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")), "position_ids": Sequence(Value("int32")),
    "attention_mask": Sequence(Value("int8")), "seq_lengths": Sequence(Value("int32")), "full_text": Value("string"),
})


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each example (longest first) goes to the open row with the least room
    that still fits it. Returns the example indices of each row."""
    members, per_row = plan_rows(np.asarray(lengths, dtype=np.int32), capacity)
    ends = np.cumsum(per_row)
    return [members[end - n:end].tolist() for n, end in zip(per_row, ends)]


def plan_rows(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit decreasing as flat arrays (a few bytes per example, however many there are): the
    example indices row after row, each row's in the order they were placed, and the examples per row."""
    if len(lengths) and lengths.max() > capacity:
        raise ValueError("an example is longer than the row capacity")
    order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
    row_of = np.empty(len(lengths), dtype=np.int32)  # by position in `order`
    room_count = np.zeros(capacity + 1, dtype=np.int64)  # open rows by exact free room
    rows_with_room: dict[int, list[int]] = {}
    rows = 0
    for position, need in enumerate(n for start in range(0, len(order), 100_000)  # no list of them all
                                    for n in lengths[order[start:start + 100_000]].tolist()):
        candidates = np.flatnonzero(room_count[need:])
        if candidates.size:
            room = need + int(candidates[0])  # the tightest fit
            row = rows_with_room[room].pop()
            room_count[room] -= 1
        else:
            room, row = capacity, rows
            rows += 1
        row_of[position] = row
        left = room - need
        room_count[left] += 1
        rows_with_room.setdefault(left, []).append(row)
    by_row = np.argsort(row_of, kind="stable")  # keeps the placing order within a row
    return order[by_row], np.bincount(row_of, minlength=rows)


PACK_GROUP = 2_000  # packed rows built (and their examples read) at a time


def pack_split(ds: Dataset, max_length: int) -> Dataset:
    """The packed rows, built a group at a time from the examples' Arrow columns and written to an
    Arrow file beside the split's own (in memory when the split has no file): memory holds the
    examples' lengths, the plan and one group, not the split."""
    arrow = ds.with_format("arrow")
    lengths = np.concatenate([pc.list_value_length(t.column("input_ids")).to_numpy()
                              for t in arrow.select_columns(["input_ids"]).iter(batch_size=PACK_GROUP * 8)])
    members, per_row = plan_rows(lengths, max_length)
    first = np.concatenate([[0], np.cumsum(per_row)])  # each row's first member
    groups = range(0, len(per_row), PACK_GROUP)
    tables = (packed_rows(arrow[members[first[g]:first[min(g + PACK_GROUP, len(per_row))]].tolist()],
                          per_row[g:g + PACK_GROUP].tolist()) for g in groups)
    if not ds.cache_files:
        return Dataset(InMemoryTable(pa.concat_tables(list(tables))))
    # named like datasets' own cache files, so Dataset.cleanup_cache_files() removes it too
    path = Path(ds.cache_files[0]["filename"]).parent / f"cache-tunesmith-packed-{uuid.uuid4().hex}.arrow"
    with ArrowWriter(features=PACKED_FEATURES, path=str(path)) as writer:
        for table in tables:
            writer.write_table(table)
        writer.finalize()
    return Dataset.from_file(str(path))


def packed_rows(examples: pa.Table, per_row: list[int]) -> pa.Table:
    """Examples (in row order) -> packed rows of `per_row` examples each, as Arrow columns."""
    lengths = pc.list_value_length(examples.column("input_ids")).to_numpy().astype(np.int32)
    ids = pc.list_flatten(examples.column("input_ids")).to_numpy()
    labels = pc.list_flatten(examples.column("labels")).to_numpy().copy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    labels[starts] = IGNORE  # the first token predicts nothing across a boundary
    positions = (np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.int32)
    first = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int32)  # each row's first example
    token_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)])[first].astype(np.int32))
    texts = examples.column("full_text").to_pylist()
    columns = {
        "input_ids": pa.ListArray.from_arrays(token_offsets, ids.astype(np.int32)),
        "labels": pa.ListArray.from_arrays(token_offsets, labels.astype(np.int32)),
        "position_ids": pa.ListArray.from_arrays(token_offsets, positions),
        "attention_mask": pa.ListArray.from_arrays(token_offsets, np.ones(len(ids), np.int8)),
        "seq_lengths": pa.ListArray.from_arrays(pa.array(first), lengths),
        "full_text": pa.array(["".join(texts[a:b]) for a, b in zip(first[:-1], first[1:])], pa.string()),
    }
    return pa.Table.from_pydict(columns, schema=PACKED_FEATURES.arrow_schema)


def examples_per_row(ds: Dataset, sample: int = 1_000) -> float | None:
    """Mean examples per packed row over the first `sample` rows (an example starts where its
    positions restart at 0); None for rows without `position_ids` (not packed)."""
    if "position_ids" not in ds.column_names or len(ds) == 0:
        return None
    positions = pc.list_flatten(ds.with_format("arrow")[:sample]["position_ids"])
    return pc.sum(pc.equal(positions, 0)).as_py() / min(sample, len(ds))


def packing_report(before: Dataset, after: Dataset, max_length: int) -> dict:
    tokens = pc.sum(pc.list_value_length(after.data.column("input_ids"))).as_py() or 0
    return {"examples": len(before), "rows": len(after), "fill": round(tokens / (len(after) * max_length), 4) if len(after) else 0.0}
