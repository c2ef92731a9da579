"""Write prepared splits to disk atomically: a temporary folder (or file), renamed only when complete.

Two layouts: `splits` (tunesmith's own: a DatasetDict folder with the report beside the data) and
`dataset` (the two-step workflow's: one Dataset, written by save_to_disk, to_json, to_parquet or
to_csv at the given path; a file output gets its report as `<path>.prep_report.json`).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

REPORT = "prep_report.json"
META = "tunesmith_data.json"


def write_prepared(splits: DatasetDict, out_dir: str, report: dict, meta: dict, export: list[str],
                   layout: str = "splits", writer: str = "save_to_disk") -> Path:
    if layout == "dataset" and writer != "save_to_disk":
        return write_file(splits["train"], Path(out_dir), writer, report, meta)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp, old = temporary(out, "tmp"), temporary(out, "old")
    try:
        (splits["train"] if layout == "dataset" else splits).save_to_disk(str(tmp))
        for name, ds in splits.items():
            if "jsonl" in export:
                ds.to_json(str(tmp / f"{name}.jsonl"), lines=True)
            if "parquet" in export:
                ds.to_parquet(str(tmp / f"{name}.parquet"))
        (tmp / REPORT).write_text(json.dumps(report, indent=2))
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if out.exists():
            out.rename(old)  # keep the previous result until the new one is in place
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def temporary(out: Path, kind: str) -> Path:
    """This process's temporary path beside `out`, named by host and pid so a later run can tell
    whether its writer is still alive."""
    return out.parent / f".{out.name}.{kind}-{socket.gethostname()}-{os.getpid()}"


def remove_leftovers(out: Path) -> None:
    """Remove what a writer on this host left beside `out` when it was killed (kill -9, out of
    memory: no cleanup ran). A writer still alive, or on another host sharing the folder, is left alone."""
    host = socket.gethostname()
    for kind in ("tmp", "old") if out.exists() else ("tmp",):  # no `out`: the old one is the only result left
        for path in out.parent.glob(f".{out.name}.{kind}-{host}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or alive(int(pid)):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def write_file(ds: Dataset, out: Path, writer: str, report: dict, meta: dict) -> Path:
    """One file by the named Dataset writer; the report and meta beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = temporary(out, "tmp")
    try:
        getattr(ds, writer)(str(tmp))
        out.parent.joinpath(f"{out.name}.{REPORT}").write_text(json.dumps(report, indent=2))
        out.parent.joinpath(f"{out.name}.{META}").write_text(json.dumps(meta, indent=2))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_meta(data_dir: str) -> dict | None:
    p = Path(data_dir) / META
    if not p.is_file():
        p = Path(f"{data_dir}.{META}")  # beside a file written by to_json / to_parquet
    return json.loads(p.read_text()) if p.is_file() else None


def read_prepared_file(path: str) -> Dataset:
    """A prepared file written by to_json / to_parquet (to_csv cannot hold token lists)."""
    from tunesmith.errors import DataError

    if path.endswith(".csv"):
        raise DataError(f"{path}: a CSV file cannot hold token lists for training",
                        "write the data with save_to_disk, to_json or to_parquet to train on it")
    builder = "parquet" if path.endswith(".parquet") else "json"
    return load_dataset(builder, data_files=path, split="train")
