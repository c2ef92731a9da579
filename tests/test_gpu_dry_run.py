"""bench/gpu/run.sh, the one prepared GPU run, dry on this CPU (DRY_RUN=1: a tiny model, the same
steps and plumbing, the CUDA tests skipped), so nothing but the GPU itself is untested when a
device is lent: every part ends, and the summary, logs, results and tables land in $OUT."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.demo_model  # the benchmark's tokenizer is the demo model's
def test_the_gpu_script_runs_dry_on_a_cpu(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "run.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["versions", "gpu-tests", "full-1b", "qlora-8b"]
    assert all(": exit 0 in " in line for line in summary), summary
    assert "torch" in (tmp_path / "versions.log").read_text()
    assert " skipped" in (tmp_path / "gpu-tests.log").read_text()  # no CUDA here: every GPU test says why
    for part in ("full-1b", "qlora-8b"):
        results = json.loads((tmp_path / f"{part}.json").read_text())
        [(label, entry)] = results.items()
        assert set(entry["results"]) == {"tunesmith default", "trl padded"}
        assert all(r["trained_tokens"] > 0 for r in entry["results"].values()), entry
    table = (tmp_path / "table.md").read_text()
    assert "## full-1b" in table and "trained tok/s" in table and "## qlora-8b" in table
