"""Several processes (torchrun, gloo, 2 processes on this CPU) give the run of one process.

2 processes x batch 2 must give the update of 1 process x batch 2 x accumulation 2: same final
weights, same logged losses, same eval loss, for full fine-tuning (tied and untied embeddings),
LoRA, packed rows, padded and padding-free batches, and with accumulation on both sides. fp32,
SGD and a constant learning rate make the comparison exact up to summation order.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import make_tiny_llama, write_config, write_jsonl
from tunesmith.cli import main

pytestmark = pytest.mark.slow

PAIRS = [("color of the sky?", "blue"), ("capital of France?", "Paris"), ("2+2?", "4"), ("opposite of hot?", "cold"),
         ("first letter?", "A"), ("largest planet?", "Jupiter"), ("frozen water?", "ice"), ("fox says?", "unknown")]
# Answers of different lengths: a per-process or per-micro-batch mean would weight tokens differently.
ROWS = [{"prompt": f"Q: {q}\nA: ", "response": " ".join([a] * (1 + i % 4))} for i, (q, a) in enumerate(PAIRS * 3)]
WORKER = Path(__file__).parent / "dist_worker.py"

# name -> (config changes, accumulation on the 2-process side)
CASES = {
    "full_tied_padding_free": ({}, 1),
    "full_untied_padded": ({"base": "untied", "data": {"batching": "padded"}}, 1),
    # 18 examples pack into 9 rows: 2 steps of 4 rows stay inside the first epoch (at an epoch's
    # end accelerate fills the last batch of each process with rows from the start).
    "packed": ({"data": {"packing": True}, "training": {"max_steps": 2, "eval_steps": 2}}, 1),
    "lora": ({"model": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}}, 1),
    "accumulation_both_sides": ({"training": {"max_steps": 2, "eval_steps": 2}}, 2),  # 8 rows a step
}


def torchrun(args: list[str], timeout: int = 300, **env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def write_case(folder: Path, base: Path, changes: dict, accumulation: int, **training) -> Path:
    write_jsonl(folder / "rows.jsonl", ROWS)
    cfg = {"name": folder.name, "base_model": str(base), "output_dir": "out",
           "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64, "validation_split": 0.25,
                    **changes.get("data", {})},
           "model": changes.get("model", {}),
           "training": {"max_steps": 3, "optim": "sgd", "learning_rate": 0.5, "lr_scheduler_type": "constant",
                        "bf16": False, "max_grad_norm": 1e9, "per_device_train_batch_size": 2,
                        "gradient_accumulation_steps": accumulation, "logging_steps": 1, "eval_steps": 3,
                        "save_strategy": "no", "disable_tqdm": True, **changes.get("training", {}), **training}}
    return write_config(folder / "cfg.yaml", cfg)


def weights(out: Path) -> dict[str, torch.Tensor]:
    final = out / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(final / name)


def logged(out: Path) -> tuple[list[float], list[float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r], [r["eval_loss"] for r in records if "eval_loss" in r]


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory, bos_tok_dir):
    return make_tiny_llama(bos_tok_dir, tmp_path_factory.mktemp("untied"), tied=False)


def test_two_processes_give_the_one_process_update(tmp_path, tiny_llama, untied_llama):
    configs = {}
    for name, (changes, accumulation) in CASES.items():
        base = untied_llama if changes.get("base") == "untied" else tiny_llama
        configs[name] = write_case(tmp_path / "two" / name, base, changes, accumulation)
    result = torchrun([str(WORKER), str(tmp_path), *" -- ".join(str(c) for c in configs.values()).split()])
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["codes"] == [0] * len(CASES)
        # The trained-positions loss ran under DDP on every process; the model's own loss never did.
        assert report["calls"]["trained_positions"] > 0 and report["calls"]["full_logits_with_labels"] == 0
        # Gradients were synchronised: every process ends with the same parameters.
        assert max(report["max_param_spread"]) == 0.0

    for name, (changes, accumulation) in CASES.items():
        base = untied_llama if changes.get("base") == "untied" else tiny_llama
        one = write_case(tmp_path / "one" / name, base, changes, 2 * accumulation)
        assert main(["run", str(one)]) == 0
        two_out, one_out = configs[name].parent / "out", one.parent / "out"
        a, b = weights(two_out), weights(one_out)
        start = {k: v for k, v in load_file(Path(base) / "model.safetensors").items()}
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name
        if changes.get("model", {}).get("method") != "lora":
            assert max((a[k] - start[k]).abs().max().item() for k in a if k in start) > 1e-3, name  # it trained
        (two_losses, two_evals), (one_losses, one_evals) = logged(two_out), logged(one_out)
        assert len(two_losses) == changes.get("training", {}).get("max_steps", 3) and two_losses == pytest.approx(one_losses, abs=1e-6), name
        assert two_evals == pytest.approx(one_evals, abs=1e-6) and len(two_evals) == 1, name
        two_summary = json.loads((two_out / "summary.json").read_text())
        one_summary = json.loads((one_out / "summary.json").read_text())
        assert two_summary["processes"] == 2 and one_summary["processes"] == 1
        # Token counts are summed over the processes: the same tokens were trained on.
        assert (two_summary["trained_tokens"], two_summary["tokens"]) == (one_summary["trained_tokens"], one_summary["tokens"])
