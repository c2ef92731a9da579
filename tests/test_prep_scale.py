"""prep streams: its memory does not grow with the number of rows (the rows are read, processed,
counted and written a batch at a time; what stays in memory is per batch or per distinct length)."""
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets.table import MemoryMappedTable

from helpers import run_measuring_memory, write_config
from tunesmith.cli import main
from tunesmith.data.prepare import load_prepared
from tunesmith.data.report import _add_counts, percentiles
from tunesmith.train.run import training_columns

WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing".split()


def write_rows(path: Path, n: int) -> Path:
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 12))),
                                "response": " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))}) + "\n")
    return path


def prep_peak_mb(tmp_path: Path, tok_dir: Path, n: int, packing: bool) -> float:
    folder = tmp_path / f"{n}-{packing}"
    folder.mkdir()
    write_rows(folder / "rows.jsonl", n)
    # The JSON loader's working set is one chunk of the file (and its first chunk's rows as Python
    # objects, once): a constant, reached at 10 MB of JSON by default; a 1 MB chunk reaches it at
    # both sizes here, so what is compared is what grows with the rows.
    source = {"data_files": "rows.jsonl", "kwargs": {"chunksize": 1 << 20}}
    cfg = write_config(folder / "cfg.yaml", {"base_model": str(tok_dir), "output_dir": "out",
                                             "data": {"train": source, "max_length": 64, "packing": packing}})
    status, peak, _ = run_measuring_memory([sys.executable, "-m", "tunesmith.cli", "prep", str(cfg)], cwd=folder)
    assert status == 0
    report = json.loads((folder / "out" / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["rows_read"] == n
    return peak


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
@pytest.mark.parametrize("packing", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["rows", "packed"])
def test_prep_memory_stays_flat_as_rows_grow(tmp_path, tok_dir, packing):
    small = prep_peak_mb(tmp_path, tok_dir, 20_000, packing)
    large = prep_peak_mb(tmp_path, tok_dir, 200_000, packing)
    print(f"peak anonymous RSS: 20k rows {small:.0f} MB, 200k rows {large:.0f} MB")
    # The peak of one run moves by ~8 MB from run to run (allocator arenas), ~45 bytes per added row
    # at these sizes: runs measured 1-47 bytes per row without packing and 58-90 with it (the plan
    # of the whole split is linear by design: best-fit needs every length). So the bounds catch a
    # prep that keeps rows or tokens as Python objects (hundreds of bytes per row and up), not
    # differences of a few tens of bytes, such as the ~65 the report once kept per row: those
    # need a million-row run (bench/prep_scale.py).
    per_row = (large - small) * 2**20 / 180_000
    assert per_row < (200 if packing else 100), (small, large)


def test_length_percentiles_from_histograms_equal_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 101, 5000):
        x = rng.integers(0, 3000, n)
        hist = _add_counts(_add_counts(np.zeros(0, np.int64), x[:n // 2]), x[n // 2:])  # two batches
        p = np.percentile(x, [50, 90, 99])
        assert percentiles(hist) == {"p50": int(p[0]), "p90": int(p[1]), "p99": int(p[2]), "max": int(x.max())}


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_training_reads_the_prepared_rows_memory_mapped(tmp_path, tok_dir, sampling):
    """Training starts without loading the prepared set: its token columns stay in the Arrow files,
    memory-mapped (only the `length` column for length-grouped sampling is built in memory)."""
    write_rows(tmp_path / "rows.jsonl", 500)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tok_dir), "output_dir": str(tmp_path / "out"),
                                               "data": {"train": {"data_files": str(tmp_path / "rows.jsonl")}}})
    assert main(["prep", str(cfg)]) == 0
    ds = training_columns(load_prepared(str(tmp_path / "out" / "data"))["train"], sampling)
    blocks = [b for row in getattr(ds.data, "blocks", [[ds.data]]) for b in row]
    token_blocks = [b for b in blocks if "input_ids" in b.column_names]
    assert token_blocks and all(isinstance(b, MemoryMappedTable) for b in token_blocks)
    assert ds._indices is None  # no index mapping that would make the Trainer gather rows
