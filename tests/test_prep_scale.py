"""prep streams: its memory does not grow with the number of rows (the rows are read, processed,
counted and written a batch at a time; what stays in memory is per batch or per distinct length)."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run_measuring_memory, write_config
from tunesmith.data.report import _add_counts, percentiles

WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing".split()


def write_rows(path: Path, n: int) -> Path:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 12))),
                                "response": " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))}) + "\n")
    return path


def prep_peak_mb(tmp_path: Path, tok_dir: Path, n: int) -> float:
    folder = tmp_path / str(n)
    folder.mkdir()
    write_rows(folder / "rows.jsonl", n)
    # The JSON loader's working set is one chunk of the file (and its first chunk's rows as Python
    # objects, once): a constant, reached at 10 MB of JSON by default; a 1 MB chunk reaches it at
    # both sizes here, so what is compared is what grows with the rows.
    source = {"data_files": "rows.jsonl", "kwargs": {"chunksize": 1 << 20}}
    cfg = write_config(folder / "cfg.yaml", {"base_model": str(tok_dir), "output_dir": "out",
                                             "data": {"train": source, "max_length": 64}})
    status, peak = run_measuring_memory([sys.executable, "-m", "tunesmith.cli", "prep", str(cfg)], cwd=folder)
    assert status == 0
    report = json.loads((folder / "out" / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["rows_read"] == n
    return peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_prep_memory_stays_flat_as_rows_grow(tmp_path, tok_dir):
    small = prep_peak_mb(tmp_path, tok_dir, 20_000)
    large = prep_peak_mb(tmp_path, tok_dir, 200_000)
    print(f"peak anonymous RSS: 20k rows {small:.0f} MB, 200k rows {large:.0f} MB")
    # Under 40 bytes per added row (the row index column takes 8). Keeping the report's per-row
    # status values as Python objects, as prep once did, took ~65.
    assert (large - small) * 2**20 / 180_000 < 40, (small, large)


def test_length_percentiles_from_histograms_equal_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101, 5000):
        x = rng.integers(0, 3000, n)
        hist = _add_counts(_add_counts(np.zeros(0, np.int64), x[:n // 2]), x[n // 2:])  # two batches
        p = np.percentile(x, [50, 90, 99])
        assert percentiles(hist) == {"p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]), "max": int(x.max())}
