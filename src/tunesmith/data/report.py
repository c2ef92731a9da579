"""Counts, drops, cuts and length percentiles -> prep_report.json and a printed summary."""
from __future__ import annotations

import numpy as np
from datasets import Dataset
from rich.console import Console
from rich.table import Table

SAMPLE_ROWS = 5  # row indices listed per reason


def split_report(ds: Dataset) -> dict:
    """Statistics of one processed split, from the status columns that rows.py writes."""
    names = ["_row", "_status", "_cut", "_error", "_prompt_tokens", "_trained_tokens", "_trailing_removed"]
    table = ds.select_columns(names).with_format("arrow")[:]  # whole columns at once, not row by row
    arr = {c: table.column(c).to_numpy(zero_copy_only=False) for c in names}
    rows, status = arr["_row"], arr["_status"]
    kept = status == "ok"
    dropped = {}
    for reason in sorted(set(status.tolist()) - {"ok"}):
        hit = status == reason
        entry = {"count": int(hit.sum()), "rows": rows[hit][:SAMPLE_ROWS].tolist()}
        if reason == "bad_row":
            entry["messages"] = arr["_error"][hit][:SAMPLE_ROWS].tolist()
        dropped[reason] = entry
    cut = {}
    for kind in sorted(set(arr["_cut"][kept].tolist()) - {""}):
        hit = kept & (arr["_cut"] == kind)
        cut[kind] = {"count": int(hit.sum()), "rows": rows[hit][:SAMPLE_ROWS].tolist()}
    prompt, trained = arr["_prompt_tokens"][kept], arr["_trained_tokens"][kept]
    total = int(prompt.sum() + trained.sum())
    return {
        "rows_read": int(len(status)),
        "rows_kept": int(kept.sum()),
        "dropped": dropped,
        "cut": cut,
        "trailing_turns_removed": int(arr["_trailing_removed"].sum()),
        "tokens": total,
        "trained_tokens": int(trained.sum()),
        "trained_share": round(float(trained.sum()) / total, 4) if total else 0.0,
        "prompt_tokens_pct": _percentiles(prompt),
        "response_tokens_pct": _percentiles(trained),
        "length_pct": _percentiles(prompt + trained),
    }


def _percentiles(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {}
    p = np.percentile(x, [50, 90, 99])
    return {"p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]), "max": int(x.max())}


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
