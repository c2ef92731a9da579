"""How `tunesmith prep` scales with rows: time and peak memory on generated prompt/response rows.

Each size is written as JSONL, then prepared by `tunesmith prep` in a fresh process: its peak RSS
(from the kernel when it exits) and the peak of its anonymous part (sampled; RSS also counts the
memory-mapped Arrow files). Time should grow linearly with rows and the anonymous memory stay
flat: prep streams the rows through in batches and writes Arrow as it goes.

    .venv/bin/python bench/prep_scale.py                            # 100k, 300k, 1M rows
    .venv/bin/python bench/prep_scale.py --rows 20000,60000 --tokenizer PATH
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import run_measuring_memory  # noqa: E402  (the tests measure prep's memory the same way)

WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be or has had "
         "not but also its after first new two they one who their been year all into more other time some may "
         "water light river city music paper garden question answer summary context history energy market").split()


def write_rows(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` prompt/response rows of 5-80 and 5-150 words, written in blocks (flat memory here too)."""
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)
    with open(path, "w") as f:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            lines = []
            for p_len, r_len in zip(rng.integers(5, 80, n), rng.integers(5, 150, n)):
                words = rng.choice(vocab, p_len + r_len)
                lines.append(json.dumps({"prompt": "Question: " + " ".join(words[:p_len]) + "\nAnswer: ",
                                         "response": " ".join(words[p_len:])}))
            f.write("\n".join(lines) + "\n")
    return path


def prep_in_fresh_process(data: Path, tokenizer: str, out: Path, quiet: bool = True) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, peak anonymous RSS MB) of `tunesmith prep` on `data`, in its own process."""
    cfg = out.parent / f"{out.name}.yaml"
    cfg.write_text(json.dumps({"base_model": tokenizer, "output_dir": str(out),
                               "data": {"train": {"data_files": str(data)}, "max_length": 512}}))
    start = time.perf_counter()
    status, anonymous, rss = run_measuring_memory([sys.executable, "-m", "tunesmith.cli", "prep", str(cfg)],
                                                  stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL if quiet else None)
    if status != 0:
        raise SystemExit(f"tunesmith prep failed on {data} (run it by hand to see why)")
    return time.perf_counter() - start, rss, anonymous


def main() -> None:
    from tunesmith.demo_model import demo_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="100000,300000,1000000", help="comma-separated sizes")
    ap.add_argument("--tokenizer", help="model folder or .gguf (default: the demo model's)")
    args = ap.parse_args()
    tokenizer = args.tokenizer or str(demo_model_path())
    sizes = [int(s) for s in args.rows.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = write_rows(Path(tmp) / f"rows_{n}.jsonl", n)
            results.append((n, *prep_in_fresh_process(data, tokenizer, Path(tmp) / f"out_{n}")))
            for p in Path(tmp).glob(f"*_{n}*"):
                subprocess.run(["rm", "-rf", str(p)], check=True)  # keep the disk use to one size at a time
    print(f"\n$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"tokenizer {Path(tokenizer).name}, generated prompt/response rows, max_length 512, {os.cpu_count()} cores")
    print(f"{'rows':>10}{'seconds':>9}{'rows/s':>9}{'s per 100k':>12}{'peak RSS MB':>13}{'of it anonymous':>17}")
    for n, seconds, rss, anon in results:
        print(f"{n:>10,}{seconds:9.1f}{n / seconds:9,.0f}{seconds * 100_000 / n:12.1f}{rss:13,.0f}{anon:17,.0f}")


if __name__ == "__main__":
    main()
