"""`make demo`: a real pretrained model fine-tuned on a real dataset on a laptop CPU, with the
numbers that show what changed. Fetch the model, prepare ARC-Easy, evaluate the base model on the
held-out questions, fine-tune on the rest, evaluate again, print before/after."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from tunesmith.config import load_config
from tunesmith.data.prepare import prepare
from tunesmith.demo_model import demo_model_path
from tunesmith.infer.evaluate import evaluate, print_results
from tunesmith.ship.card import write_run_cards
from tunesmith.ship.report import write_report
from tunesmith.train.run import train

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "arc_easy" / "cpu.yaml"


def run_demo(config: str | None = None, overrides: list[str] | None = None) -> dict:
    console = Console(stderr=True)
    start = time.perf_counter()
    console.rule("1/5 demo model (SmolLM2-135M-Instruct, GGUF from PyPI)")
    gguf = demo_model_path()
    cfg = load_config(config or DEFAULT_CONFIG, [f"base_model={gguf}", *(overrides or [])])
    console.rule("2/5 prepare ARC-Easy: 80 questions to train on, 20 held out")
    prepare(cfg)
    console.rule("3/5 evaluate the base model on the held-out questions")
    before = evaluate(cfg, label="base model", max_new_tokens=32, console=console)
    console.rule("4/5 fine-tune")
    summary = train(cfg)
    console.rule("5/5 evaluate the fine-tuned model")
    after = evaluate(cfg, model_path=summary["final"], label="fine-tuned", max_new_tokens=32, console=console)
    seconds = time.perf_counter() - start
    console.rule("before / after")
    print_results([before, after], console)
    out = Path(cfg.resolved_output_dir())
    write_run_cards(cfg, summary)  # after the evaluation, which the card shows
    report = write_report(cfg)
    console.print(f"train loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}; "
                  f"{summary['tokens_per_second']:.0f} tokens/s ({summary['trained_tokens_per_second']:.0f} of them trained); "
                  f"whole demo {seconds:.0f}s")
    console.print(f"model: {summary['final']}\nloss curve: {out / 'loss.png'}\npredictions: {out / 'eval'}\nreport: {report}")
    return {"before": before, "after": after, "train": summary, "seconds": round(seconds, 1)}
