"""Counts, drops, cuts and length percentiles -> prep_report.json and a printed summary."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
from datasets import Dataset
from rich.console import Console
from rich.table import Table

from tunesmith.data.rows import STATUS_COLUMNS

SAMPLE_ROWS = 5  # row indices listed per reason


STATS_BATCH = 50_000  # rows of the status columns read at a time


def split_report(ds: Dataset) -> dict:
    """Statistics of one processed split, from the status columns that rows.py writes. Read a
    batch at a time into running counts and length histograms, so the memory it takes does not
    grow with the number of rows."""
    stats = SplitStats()
    for batch in ds.select_columns(STATUS_COLUMNS).with_format("arrow").iter(batch_size=STATS_BATCH):
        stats.add(batch)
    return stats.report()


class SplitStats:
    """Running totals over batches of status columns: counts and sample rows per drop and cut
    reason, and histograms of the kept rows' token counts (exact percentiles, bounded memory)."""

    def __init__(self):
        self.rows_read = self.trailing_removed = self.extra_examples = self.reasoning_turns = 0
        self.dropped: dict[str, dict] = {}
        self.cut: dict[str, dict] = {}
        self.prompt_hist = self.trained_hist = self.length_hist = np.zeros(0, np.int64)

    def add(self, table: pa.Table) -> None:
        arr = {c: table.column(c).to_numpy(zero_copy_only=False) for c in STATUS_COLUMNS}
        rows, status = arr["_row"], arr["_status"]
        first = arr["_part"] == 0
        self.rows_read += int(first.sum())
        self.extra_examples += int((~first).sum())
        self.trailing_removed += int(arr["_trailing_removed"].sum())
        self.reasoning_turns += int(arr["_reasoning_turns"].sum())
        kept = status == "ok"
        for reason in set(status.tolist()) - {"ok"}:
            hit = status == reason
            extra = {"messages": arr["_error"][hit]} if reason == "bad_row" else {}
            _count(self.dropped, reason, rows[hit], **extra)
        for kind in set(arr["_cut"][kept].tolist()) - {""}:
            hit = kept & (arr["_cut"] == kind)
            _count(self.cut, kind, rows[hit])
        prompt, trained = arr["_prompt_tokens"][kept], arr["_trained_tokens"][kept]
        self.prompt_hist = _add_counts(self.prompt_hist, prompt)
        self.trained_hist = _add_counts(self.trained_hist, trained)
        self.length_hist = _add_counts(self.length_hist, prompt + trained)

    def report(self) -> dict:
        values = np.arange(len(self.length_hist))
        trained = int(self.trained_hist @ np.arange(len(self.trained_hist)))
        total = int(self.length_hist @ values)
        return {
            "rows_read": self.rows_read,
            "rows_kept": int(self.length_hist.sum()),
            # Rows a history-rewriting chat template split into one example per assistant turn.
            "examples_added_by_turn_split": self.extra_examples,
            "dropped": dict(sorted(self.dropped.items())),
            "cut": dict(sorted(self.cut.items())),
            "trailing_turns_removed": self.trailing_removed,
            "reasoning_turns": self.reasoning_turns,  # assistant turns with reasoning (data.chat.thinking: auto reads it)
            "tokens": total,
            "trained_tokens": trained,
            "trained_share": round(trained / total, 4) if total else 0.0,
            "prompt_tokens_pct": percentiles(self.prompt_hist),
            "response_tokens_pct": percentiles(self.trained_hist),
            "length_pct": percentiles(self.length_hist),
        }


def _count(entries: dict, reason: str, rows: np.ndarray, messages: np.ndarray | None = None) -> None:
    entry = entries.setdefault(reason, {"count": 0, "rows": []})
    room = SAMPLE_ROWS - len(entry["rows"])
    entry["count"] += len(rows)
    entry["rows"] += rows[:room].tolist()
    if messages is not None:
        entry["messages"] = entry.get("messages", []) + messages[:room].tolist()


def _add_counts(hist: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(values.astype(np.int64), minlength=len(hist))
    counts[:len(hist)] += hist
    return counts


def percentiles(hist: np.ndarray) -> dict:
    """p50/p90/p99/max of the values a histogram counts (hist[v] = how many rows have value v),
    as np.percentile's default (linear interpolation) gives them on the values themselves."""
    n = int(hist.sum())
    if n == 0:
        return {}
    ends = np.cumsum(hist)  # the k-th smallest value (from 0) is the first v with ends[v] > k

    def kth(k: int) -> int:
        return int(np.searchsorted(ends, k, side="right"))

    out = {}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        h = (n - 1) * q / 100
        low = int(np.floor(h))
        out[name] = int(kth(low) + (h - low) * (kth(min(low + 1, n - 1)) - kth(low)))
    out["max"] = kth(n - 1)
    return out


def print_summary(report: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True)
    table = Table(title=f"prepared data -> {report['output']}")
    for col in ("split", "rows read", "kept", "dropped", "cut", "tokens", "trained", "length p50/p90/max"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in report["splits"].items():
        lp = s["length_pct"]
        table.add_row(name, f"{s['rows_read']:,}", f"{s['rows_kept']:,}",
                      f"{sum(v['count'] for v in s['dropped'].values()):,}", f"{sum(v['count'] for v in s['cut'].values()):,}",
                      f"{s['tokens']:,}", f"{s['trained_share']:.0%}", f"{lp.get('p50', 0)}/{lp.get('p90', 0)}/{lp.get('max', 0)}")
    console.print(table)
    for name, s in report["splits"].items():
        for what, entries in (("dropped", s["dropped"]), ("cut", s["cut"])):
            for reason, v in entries.items():
                console.print(f"  {name}: {what} {reason}: {v['count']} (rows {_rows(v['rows'])})")
            for msg in entries.get("bad_row", {}).get("messages", [])[:3]:
                console.print(f"    [yellow]{msg}[/yellow]")
        if "packing" in s:
            p = s["packing"]
            console.print(f"  {name}: packed {p['examples']:,} examples into {p['rows']:,} rows ({p['fill']:.0%} full)")
        if s["trailing_turns_removed"]:
            console.print(f"  {name}: removed {s['trailing_turns_removed']} trailing non-assistant turns (nothing to learn)")
    console.print(f"{report['seconds']:.1f}s, {report['tokens_per_second']:,.0f} tokens/s; "
                  f"format {report['prompt_format']}, max_length {report['max_length']}, overlength {report['overlength']}")


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows)) + (", ..." if len(rows) == SAMPLE_ROWS else "")
