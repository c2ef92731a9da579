"""Run under torchrun by tests/test_distributed.py: each config through the CLI, as a user would,
with spies that record what a test cannot see from outside the processes:

- how often the model's own forward (full-vocabulary logits) ran with labels, and how often the
  trained-positions loss ran, on each process;
- a fingerprint of every parameter on each process just before saving, gathered to compare.

Usage: torchrun --nproc_per_node 2 dist_worker.py RESULT_DIR CONFIG [KEY=VALUE ...] [-- CONFIG ...]
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers.models.llama import modeling_llama

from tunesmith import cli
from tunesmith.train import artifacts, loss

calls = {"full_logits_with_labels": 0, "trained_positions": 0}

_model_forward = modeling_llama.LlamaForCausalLM.forward


def spy_forward(self, *args, labels=None, **kwargs):
    if labels is not None:
        calls["full_logits_with_labels"] += 1
    return _model_forward(self, *args, labels=labels, **kwargs)


_loss_sum = loss.linear_cross_entropy_sum


def spy_loss_sum(*args, **kwargs):
    calls["trained_positions"] += 1
    return _loss_sum(*args, **kwargs)


_save_final = artifacts.save_final
fingerprints: list = []


def spy_save_final(trainer, *args, **kwargs):
    local = torch.stack([p.detach().double().sum() for p in trainer.model.parameters()]).cpu()
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    fingerprints.append(max((g - gathered[0]).abs().max().item() for g in gathered))
    return _save_final(trainer, *args, **kwargs)


def main() -> None:
    result_dir, runs = Path(sys.argv[1]), " ".join(sys.argv[2:]).split(" -- ")
    modeling_llama.LlamaForCausalLM.forward = spy_forward
    loss.linear_cross_entropy_sum = spy_loss_sum
    artifacts.save_final = spy_save_final
    codes = [cli.main(["run", *run.split()]) for run in runs]
    rank = int(os.environ["RANK"])
    report = {"codes": codes, "calls": calls, "max_param_spread": fingerprints}
    (result_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
