"""Write prepared splits to disk atomically: a temporary folder, renamed only when complete."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from datasets import DatasetDict

REPORT = "prep_report.json"
META = "tunesmith_data.json"


def write_prepared(splits: DatasetDict, out_dir: str, report: dict, meta: dict, export: list[str]) -> Path:
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        splits.save_to_disk(str(tmp))
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


def read_meta(data_dir: str) -> dict | None:
    p = Path(data_dir) / META
    return json.loads(p.read_text()) if p.is_file() else None
