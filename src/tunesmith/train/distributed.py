"""What differs when a launcher (torchrun, `accelerate launch`) starts several processes.

Each process runs the same recipe; these helpers say who writes files (the main process only),
make the others wait where one process does work for all (data preparation, saving), sum the
token counts of all processes, and refuse launches that would quietly not be what the user
asked for (several processes that each train alone, DataParallel, parallel modes tunesmith's
loss does not honour).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from tunesmith.errors import ConfigError


def launched_world_size(env=os.environ) -> int:
    """How many processes the launcher says it started (1 without a launcher)."""
    return int(env.get("WORLD_SIZE", "1") or 1)


def rank(env=os.environ) -> int:
    return int(env.get("RANK", "0") or 0)


def local_rank(env=os.environ) -> int:
    return int(env.get("LOCAL_RANK", "0") or 0)


def is_main_process() -> bool:
    return dist.get_rank() == 0 if is_distributed() else rank() == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_process_group(timeout_s: float = 1800) -> None:
    """Join the launcher's process group early (before the Trainer would), so that work done once
    for all processes (preparing the data) can be waited for. The Trainer reuses this group."""
    if launched_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


@contextmanager
def main_process_first():
    """The main process runs the block first; the others run it after (typically finding its
    result on disk and skipping the work)."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def broadcast(value):
    """The main process's `value`, on every process."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_processes(values: list[float], device) -> list[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def check_launch(args, trained_token_loss: bool, env=os.environ, cuda_devices: int | None = None) -> None:
    """Launches that would not give the run the user asked for fail here, before any work."""
    launched = launched_world_size(env)
    problems = []
    if launched > 1 and args.world_size != launched:
        problems.append(f"the launcher started {launched} processes (WORLD_SIZE) but the Trainer sees {args.world_size}: "
                        "each would train alone and write the same folder. On a machine without a GPU keep "
                        "training.use_cpu true (tunesmith's default there)")
    if launched == 1 and env.get("ACCELERATE_USE_CPU", "").lower() == "true" and env.get("MASTER_ADDR"):
        problems.append("`accelerate launch --cpu` with several processes starts only one (accelerate runs several CPU "
                        "processes only through mpirun): use `torchrun --nproc_per_node N -m tunesmith.cli train CONFIG`")
    gpus = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if launched == 1 and args.n_gpu > 1 and gpus > 1:
        problems.append(f"{gpus} GPUs are visible but no launcher started one process per GPU (the Trainer would fall "
                        f"back to DataParallel): use `torchrun --nproc_per_node {gpus} -m tunesmith.cli train CONFIG`, "
                        "or pick one GPU with CUDA_VISIBLE_DEVICES=0")
    pc = getattr(args, "parallelism_config", None)
    for size in ("tp_size", "cp_size", "sp_size"):
        if (getattr(pc, size, 1) or 1) > 1:
            problems.append(f"training.parallelism_config.{size} > 1: tensor / context / sequence parallelism is not "
                            "supported by tunesmith's trained-token loss and packing; use data parallelism (DDP, FSDP, "
                            "DeepSpeed ZeRO)")
    if trained_token_loss and launched > 1 and not args.average_tokens_across_devices:
        problems.append("training.average_tokens_across_devices: false would weight each process's tokens by its own "
                        "count, so N processes would not give the update of one process with N times the batch; remove it")
    if problems:
        raise ConfigError("this launch cannot give the run the config asks for\n" + "\n".join(f"  {p}" for p in problems))
