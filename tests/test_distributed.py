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


def test_fsdp2_with_tunesmiths_forward_matches_one_process(tmp_path, tiny_llama):
    """accelerate will not start FSDP on a CPU, so torch's fully_shard in accelerate's layout."""
    result = torchrun([str(Path(__file__).parent / "fsdp2_worker.py"), str(tiny_llama), str(tmp_path / "fsdp.json")])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp.json").read_text())
    assert report["sharded"] == "DTensor" and report["moved"] > 1e-3
    assert report["max_diff"] < 1e-6
    assert report["nan_guard"] == {"clean_passes": True, "processes_that_saw_the_nan": 2}


def test_cli_under_torchrun_writes_once_and_resumes_past_a_checkpoint_cut_short(tmp_path, tiny_llama, capsys):
    from tunesmith.train.checkpoints import MARKER

    changes = {"model": {"early_stopping_patience": 3}, "training": {"max_steps": 4, "save_strategy": "steps", "eval_steps": 2}}
    whole = write_case(tmp_path / "whole", tiny_llama, changes, 1)
    cut = write_case(tmp_path / "cut", tiny_llama, changes, 1)
    for cfg in (whole, cut):
        result = torchrun(["-m", "tunesmith.cli", "run", str(cfg)])
        assert result.returncode == 0, result.stderr[-3000:]
    out = whole.parent / "out"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]  # one line per logging step, not one per process
    # evaluations at steps 2 and 4, then once more for the best model early stopping keeps
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 4, 4]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "data", "final", "loss.png", "metrics.jsonl",
                                                     "run_config.yaml", "summary.json"]
    checkpoint = out / "checkpoints" / "checkpoint-4"
    assert json.loads((checkpoint / MARKER).read_text())["world_size"] == 2
    # final/ holds the kept model's weights, whole (early stopping keeps the best checkpoint's)
    best = json.loads((checkpoint / "trainer_state.json").read_text())["best_model_checkpoint"]
    trained = load_file(Path(best) / "model.safetensors")
    final = weights(out)
    assert all(torch.equal(final[k], trained[k]) for k in trained)

    # Simulate a run killed while saving checkpoint-4: no marker. Resuming skips it and continues
    # from checkpoint-2, with 2 processes, to the same weights as the uninterrupted run.
    cut_out = cut.parent / "out"
    (cut_out / "checkpoints" / "checkpoint-4" / MARKER).unlink()
    result = torchrun(["-m", "tunesmith.cli", "train", str(cut), "model.resume=auto"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping checkpoint-4: incomplete" in result.stderr
    summary = json.loads((cut_out / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    resumed = weights(cut_out)
    assert max((resumed[k] - final[k]).abs().max().item() for k in final) < 1e-6

    # Resuming with another process count would replay other batches: refused, with both counts.
    assert main(["train", str(cut), "model.resume=auto"]) == 2
    assert "world_size 2 then, 1 now" in capsys.readouterr().err


def test_launches_that_would_not_give_the_asked_run_are_refused():
    from types import SimpleNamespace

    from tunesmith.errors import ConfigError
    from tunesmith.train.distributed import check_launch

    def args(**kw):
        return SimpleNamespace(**{"world_size": 1, "n_gpu": 0, "parallelism_config": None,
                                  "average_tokens_across_devices": True, **kw})

    cases = [
        (args(), {"WORLD_SIZE": "2"}, 0, "the launcher started 2 processes (WORLD_SIZE) but the Trainer sees 1"),
        (args(), {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, 0, "accelerate launch --cpu"),
        (args(n_gpu=4), {}, 4, "4 GPUs are visible but no launcher"),
        (args(parallelism_config=SimpleNamespace(tp_size=2, cp_size=1, sp_size=1)), {}, 0, "parallelism_config.tp_size"),
        (args(world_size=2, average_tokens_across_devices=False), {"WORLD_SIZE": "2"}, 0, "average_tokens_across_devices"),
    ]
    for a, env, gpus, message in cases:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_launch(a, trained_token_loss=True, env=env, cuda_devices=gpus)
    check_launch(args(world_size=2), trained_token_loss=True, env={"WORLD_SIZE": "2"}, cuda_devices=0)  # a good launch
    check_launch(args(n_gpu=1), trained_token_loss=True, env={}, cuda_devices=1)
