"""Run under torchrun by tests/test_distributed.py: FSDP2 (torch's fully_shard, in the layout
accelerate uses: each decoder layer, then the root) with tunesmith's forward and speed-ups, one
SGD step on half of a batch per process, against one process on the whole batch.

Usage: torchrun --nproc_per_node 2 fsdp2_worker.py MODEL_DIR RESULT_JSON
"""
from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM

from tunesmith.train.attention import use_varlen_sdpa
from tunesmith.train.autocast import share_norm_casts
from tunesmith.train.collate import PadCollator
from tunesmith.train.faults import _any_rank, local_grads_finite
from tunesmith.train.loss import use_trained_positions_loss
from tunesmith.train.swiglu import use_memory_saving_swiglu

LR = 0.5


def batch_of(rows: list[list[int]]) -> dict:
    features = [{"input_ids": r, "labels": [-100] * 3 + r[3:]} for r in rows]
    return PadCollator(pad_id=0, padding_free=True, segment_kwargs=True)(features)


def sgd_step(model, batch: dict, num_items: torch.Tensor, scale: float) -> float:
    out = model(**batch, num_items_in_batch=num_items)
    (out.loss * scale).backward()  # the Trainer multiplies by the process count; FSDP averages gradients
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return out.loss.item()


def main() -> None:
    model_dir, result = sys.argv[1], sys.argv[2]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    rows = [torch.randint(5, 300, (n,)).tolist() for n in (9, 14, 6, 11)]
    num_items = sum(len(r) - 3 for r in rows)  # labels[1:] that are not -100

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    for speedup in (use_trained_positions_loss, share_norm_casts, use_memory_saving_swiglu, use_varlen_sdpa):
        speedup(model)
    reference = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    mine = rows[rank::world]
    sgd_step(model, batch_of(mine), torch.tensor(num_items), float(world))
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach() for k, v in model.state_dict().items()}

    # The NaN guard on sharded gradients: a NaN in one process's shard stops every process.
    model.zero_grad(set_to_none=True)
    model(**batch_of(mine), num_items_in_batch=torch.tensor(num_items)).loss.backward()
    clean = local_grads_finite(model)
    if rank == world - 1:
        shard = next(p.grad for p in model.parameters() if p.grad is not None and p.grad.to_local().numel())
        shard.to_local().view(-1)[0] = float("nan")
    seen = torch.tensor([float(_any_rank(not local_grads_finite(model)))])
    dist.all_reduce(seen)

    if rank == 0:
        sgd_step(reference, batch_of(rows), torch.tensor(num_items), 1.0)
        want = reference.state_dict()
        start = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
        report = {"max_diff": max((full[k] - want[k]).abs().max().item() for k in want),
                  "moved": max((want[k] - start[k]).abs().max().item() for k in want),
                  "sharded": type(next(iter(model.parameters()))).__name__,
                  "nan_guard": {"clean_passes": clean, "processes_that_saw_the_nan": int(seen.item())}}
        with open(result, "w") as f:
            json.dump(report, f)
    dist.barrier()  # leave together: a process tearing gloo down while the other still works can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
