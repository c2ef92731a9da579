"""What a run left on disk, read once for the model card and the report page: summary.json,
prep_report.json, eval/<label>/, loss.png, and example rows split at the trained tokens."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.hf import IGNORE

SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|auth|credential|private[_-]?key", re.I)
MASK = "***"


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_facts(cfg: Config) -> dict:
    out = Path(cfg.resolved_output_dir())
    data_dir = Path(cfg.train_data or cfg.resolved_data_dir())
    return {
        "output_dir": out,
        "data_dir": data_dir,
        "summary": read_json(out / "summary.json"),
        "prep": read_json(data_dir / "prep_report.json"),
        "evals": read_evals(out / "eval"),
        "loss_png": out / "loss.png" if (out / "loss.png").is_file() else None,
    }


def read_evals(folder: Path) -> list[dict]:
    """eval/<label>/metrics.json + predictions.jsonl, oldest first (so: before, then after)."""
    found = []
    for metrics in folder.glob("*/metrics.json") if folder.is_dir() else []:
        preds = metrics.parent / "predictions.jsonl"
        rows = [json.loads(line) for line in preds.read_text().splitlines() if line.strip()] if preds.is_file() else []
        found.append((metrics.stat().st_mtime, {**json.loads(metrics.read_text()), "predictions": rows}))
    return [e for _, e in sorted(found, key=lambda x: x[0])]


def example_rows(data_dir: Path, tokenizer, n: int = 3) -> list[dict]:
    """The first `n` prepared training examples as runs of (text, trained), decoded from the very
    ids and labels the model was trained on. Packed rows are cut at their first example; a
    preference pair gives its chosen and its rejected side (`side`)."""
    from datasets import load_from_disk

    if not (data_dir / "train").is_dir():
        return []
    ds = load_from_disk(str(data_dir / "train"))
    rows = []
    prefixes = ["chosen_", "rejected_"] if "chosen_input_ids" in ds.column_names else [""]
    for i, prefix in itertools.product(range(min(n, len(ds))), prefixes):
        row = ds[i]
        ids, labels = row[prefix + "input_ids"], row[prefix + "labels"]
        if row.get("position_ids"):
            starts = [k for k, p in enumerate(row["position_ids"]) if p == 0 and k > 0]
            end = starts[0] if starts else len(ids)
            ids, labels = ids[:end], labels[:end]
        runs, pos = [], 0
        for trained, run in itertools.groupby(range(len(ids)), key=lambda k: labels[k] != IGNORE):
            size = len(list(run))
            text = tokenizer.decode(ids[pos:pos + size], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            runs.append((text, trained))
            pos += size
        rows.append({"tokens": len(ids), "trained": sum(1 for x in labels if x != IGNORE), "runs": runs,
                     "side": prefix.rstrip("_") or None})
    return rows


def masked(value, key: str = ""):
    """A config with every secret-looking key's value replaced, and credentials in URLs removed."""
    if isinstance(value, dict):
        return {k: (MASK if SECRET_KEY.search(str(k)) and v not in (None, "") else masked(v, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, key) for v in value]
    if isinstance(value, str):
        return re.sub(r"(://)[^/@\s]+@", r"\1" + MASK + "@", value)
    return value
