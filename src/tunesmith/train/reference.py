"""Reference log-probs without a second model in memory.

DPO, IPO and KTO compare the trained model with where it started. With an adapter the start is
the same model with the adapter off (preference.py does that in each step). With every weight
trained, the starting model's answer log-probs are computed here, once, before training, in one
pass without gradients, and stored with the prepared data under `reference/<key>.npz`, the key a
hash of the model's identity (where it was loaded from, its config, a sample of its weights, its
dtype and attention, the autocast precision) and of the prepared rows' token ids. A later run on the same
data and model reads them back instead of computing them again.

Under a launcher each process scores every N-th row and the values are gathered, so the pass
costs 1/N of one process's time, and every process trains with the same values.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from tunesmith.train.collate import REAL_TOKENS
from tunesmith.train.distributed import is_distributed, is_main_process
from tunesmith.train.model import base_causal_lm


def model_key(model, args) -> str:
    """A short hash of what the model is (its source, config, a sample of every weight, its dtype
    and attention) and of the settings that change its log-probs (autocast precision)."""
    lm = base_causal_lm(model)
    h = hashlib.sha256()
    h.update(str(getattr(lm.config, "_name_or_path", "")).encode())
    h.update(json.dumps(lm.config.to_diff_dict(), sort_keys=True, default=str).encode())
    h.update(f"{lm.dtype}-{lm.config._attn_implementation}-bf16={args.bf16}-fp16={args.fp16}".encode())
    with torch.no_grad():
        for name, p in lm.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy()
            h.update(name.encode())
            h.update(sample.tobytes())
    return h.hexdigest()[:16]


def data_key(dataset) -> str:
    """A short hash of the token columns themselves: other rows, even as many, are other data."""
    h = hashlib.sha256()
    table = dataset.with_format("arrow")[:]
    for name in sorted(c for c in table.column_names if c.endswith(("input_ids", "labels"))):
        for chunk in table[name].chunks:
            for buf in chunk.flatten().buffers() + chunk.offsets.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()[:16]


def store_path(data_dir: str | None, model, args, dataset) -> Path | None:
    """Where the values are kept: beside the prepared data, when that is a local folder."""
    if not data_dir or "://" in data_dir or not Path(data_dir).is_dir():
        return None  # one prepared file (to_json / to_parquet) or a remote store: computed every run
    return Path(data_dir) / "reference" / f"{model_key(model, args)}-{data_key(dataset)}.npz"


def read_store(path: Path | None, rows: int) -> dict[str, list[float]] | None:
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            columns = {k: stored[k].tolist() for k in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile):  # cut short or damaged: computed again
        return None
    return columns if columns and all(len(v) == rows for v in columns.values()) else None


def reference_columns(model, dataset, collator, trainer, data_dir: str | None) -> dict[str, list[float]]:
    """{ref_chosen_logps, ref_rejected_logps} (pairs) or {ref_chosen_logps, ref_kl_logps}
    (unpaired) of every row of `dataset`; read from the store when already computed."""
    path = store_path(data_dir, model, trainer.args, dataset)
    columns = read_store(path, len(dataset))
    if columns is not None:
        if is_main_process():
            print(f"tunesmith: reference log-probs read from {path}", file=sys.stderr)
        return columns
    columns = compute(model, dataset, collator, trainer)
    if path is not None and is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, **{k: np.asarray(v, np.float64) for k, v in columns.items()})
        tmp.replace(path)  # complete or absent
    return columns


def training_precision(args, model):
    """The autocast training runs under (accelerate applies it once the Trainer prepares the
    model; the reference pass comes before that), so the reference is the step-0 policy exactly."""
    device = next(model.parameters()).device.type
    if args.bf16 or args.fp16:
        return torch.autocast(device, dtype=torch.bfloat16 if args.bf16 else torch.float16)
    return contextlib.nullcontext()


def compute(model, dataset, collator, trainer) -> dict[str, list[float]]:
    world = dist.get_world_size() if is_distributed() else 1
    rank = dist.get_rank() if is_distributed() else 0
    mine = list(range(rank, len(dataset), world))
    second = "ref_rejected_logps" if "chosen_input_ids" in dataset.column_names else "ref_kl_logps"
    values: dict[int, tuple[float, float]] = {}
    was_training = model.training
    model.eval()
    per_batch = trainer.args.per_device_train_batch_size  # what fits training fits a pass without gradients
    starts = range(0, len(mine), per_batch)
    shown = is_main_process() and not trainer.args.disable_tqdm
    try:
        for start in tqdm(starts, desc="reference log-probs", unit="batch", disable=not shown):
            rows = mine[start:start + per_batch]
            batch = trainer._prepare_inputs(collator([dataset[i] for i in rows]))
            batch.pop(REAL_TOKENS, None)
            with torch.no_grad(), training_precision(trainer.args, model):
                logps = trainer.all_logps(model, batch)
            n = len(rows)
            for j, i in enumerate(rows):
                values[i] = (float(logps[j]), float(logps[n + j]))
    finally:
        model.train(was_training)
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, values)
        values = {i: v for part in gathered for i, v in part.items()}
    order = range(len(dataset))
    return {"ref_chosen_logps": [values[i][0] for i in order], second: [values[i][1] for i in order]}
