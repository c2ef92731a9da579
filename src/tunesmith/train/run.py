"""The fine-tuning recipe, top to bottom:

    prepared data -> tokenizer check -> model (+LoRA) -> TrainingArguments -> Trainer -> artifacts
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, Trainer, set_seed

from tunesmith.config.schema import Config
from tunesmith.config.training_keys import check_training_keys
from tunesmith.data.identity import same_tokenizer, tokenizer_identity
from tunesmith.data.pack import examples_per_row
from tunesmith.data.prepare import load_prepared
from tunesmith.data.write import read_meta
from tunesmith.errors import ConfigError, ModelError
from tunesmith.hf import load_tokenizer
from tunesmith.train import artifacts
from tunesmith.train.arguments import training_arguments
from tunesmith.train.checkpoints import MarkCompleteCheckpoints, is_finished, load_finished, resume_point
from tunesmith.train.chunked_ce import release_buffers
from tunesmith.train.collate import PadCollator
from tunesmith.train.distributed import check_launch, is_main_process
from tunesmith.train.faults import FaultGuard, translated_faults
from tunesmith.train.metrics import MetricsCallback
from tunesmith.train.model import base_causal_lm, load_model
from tunesmith.train.speedups import apply_speedups, prepare_for_saving
from tunesmith.train.objectives import make_objective
from tunesmith.train.preference import PAIR_COLUMNS, UNPAIRED_COLUMNS, PreferenceCollator, PreferenceTrainer, reference_source
from tunesmith.train.reference import reference_columns
from tunesmith.train.trainer import TunesmithTrainer

TRAIN_COLUMNS = ["input_ids", "labels", "position_ids"]  # position_ids only in packed data


def train(cfg: Config) -> dict:
    """One process's part of the run. Under a launcher every process runs this; the main process
    alone writes files, and the others take part in every collective (evaluation, saving)."""
    start = time.perf_counter()
    check_training_keys(cfg.training)  # fail on a typo before loading anything
    out = Path(cfg.resolved_output_dir())
    set_seed(cfg.data.seed)

    # Data: what `tunesmith prep` wrote, checked against the tokenizer we are about to use.
    data_dir = cfg.train_data or cfg.resolved_data_dir()
    prepared = load_prepared(data_dir)
    train_ds = prepared["train"]
    eval_ds = load_prepared(cfg.eval_data)["train"] if cfg.eval_data else prepared.get("eval")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.base_model, cfg.model.trust_remote_code)
    check_same_tokenizer(read_meta(data_dir), tokenizer, data_dir)

    # TrainingArguments first: they join the launcher's processes, which the guards check.
    args = training_arguments(cfg, has_eval=eval_ds is not None)
    model = load_model(cfg, tokenizer)
    attention = base_causal_lm(model).config._attn_implementation  # what `auto` resolved to, before the speed-ups
    speedups = apply_speedups(model, cfg.model, args, cfg.training)  # the registry: train/speedups.py
    trained_loss, varlen = speedups.uses("trained_positions_loss"), speedups.uses("varlen_attention")
    check_launch(args, trained_loss)
    batching = resolve_batching(cfg.data.batching, varlen)
    objective = make_objective(cfg.objective)
    check_rows_kind(train_ds, objective, data_dir)
    if eval_ds is not None:
        check_rows_kind(eval_ds, objective, cfg.eval_data or data_dir)
    reference = reference_source(objective, cfg.model.trains_adapter, cfg.objective.reference)
    if objective.data_kind:
        check_reference(reference, cfg, args)
        collator = PreferenceCollator(pad_id=tokenizer.pad_token_id, padding_free=batching == "padding_free",
                                      segment_kwargs=varlen)
    else:
        collator = PadCollator(pad_id=tokenizer.pad_token_id, padding_free=batching == "padding_free",
                               segment_kwargs=varlen, count_real_tokens=True)
    layout = "packed" if cfg.data.packing else batching
    per_row = examples_per_row(train_ds) if not objective.data_kind else None
    if is_main_process():
        print(f"tunesmith: batches {layout}{packed_step(per_row, args.per_device_train_batch_size)}, "
              f"attention {attention}{' per example' if varlen else ''}, "
              f"{objective_line(objective, reference, trained_loss)}"
              f"{f', {args.world_size} processes' if args.world_size > 1 else ''}; {speedups.line()}", file=sys.stderr)
    guard = FaultGuard(skip_nonfinite=cfg.model.nonfinite == "skip")  # signals, NaN/inf steps
    callbacks = [MarkCompleteCheckpoints(), guard]
    if cfg.model.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.model.early_stopping_patience))
    common = dict(model=model, args=args, data_collator=collator, processing_class=tokenizer,
                  train_dataset=training_columns(train_ds, args.train_sampling_strategy),
                  eval_dataset=training_columns(eval_ds) if eval_ds is not None else None, callbacks=callbacks)
    if objective.data_kind:
        trainer = PreferenceTrainer(**common, eval_collator=replace(collator, padding_free=False),
                                    objective=objective, reference=reference)
        if reference == "precomputed":  # one pass of the starting model, before any update
            trainer.train_dataset = with_columns(trainer.train_dataset, reference_columns(
                model, trainer.train_dataset, collator, trainer, data_dir))
            if trainer.eval_dataset is not None:
                trainer.eval_dataset = with_columns(trainer.eval_dataset, reference_columns(
                    model, trainer.eval_dataset, collator, trainer, cfg.eval_data or data_dir))
    else:
        trainer = TunesmithTrainer(**common, eval_collator=PadCollator(pad_id=tokenizer.pad_token_id, segment_kwargs=varlen))
    metrics = MetricsCallback(out / "metrics.jsonl", trainer.tokens, args.device, perplexity=not objective.data_kind)
    trainer.add_callback(metrics)

    resume = resume_point(cfg.model.resume, args.output_dir, args)
    if is_main_process():
        if resume is None and (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log
        artifacts.write_run_config(cfg, out)
    if is_finished(resume):
        result = load_finished(trainer, resume)
    else:
        with translated_faults(cfg, args, out, guard):  # out of memory, disk full: one message
            result = trainer.train(resume_from_checkpoint=resume)
    release_buffers()  # the loss's working memory, kept between steps

    # Artifacts: every process takes part in evaluating and saving; the main process writes.
    eval_loss = final_eval_loss(trainer, metrics.records) if eval_ds is not None else None
    trained_tokens, tokens = trainer.tokens.totals(args.device)
    prepare_for_saving(trainer.model)
    with translated_faults(cfg, args, out):
        final = artifacts.save_final(trainer, tokenizer, out, cfg)
        merged = artifacts.save_merged(trainer, tokenizer, out, cfg) if cfg.model.merge and cfg.model.trains_adapter else None
    losses = [r["loss"] for r in metrics.records if "loss" in r]
    seconds = time.perf_counter() - start
    runtime = max(result.metrics.get("train_runtime", 0.0), 1e-9)
    summary = {
        "output_dir": str(out), "final": str(final), "merged": str(merged) if merged else None,
        "resumed_from": resume, "steps": trainer.state.global_step, "wall_seconds": round(seconds, 1),
        "train_seconds": round(runtime, 1), "processes": args.world_size,
        "trained_tokens": trained_tokens,
        "trained_tokens_per_second": round(trained_tokens / runtime, 1),
        "tokens": tokens,
        "tokens_per_second": round(tokens / runtime, 1),
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "train_loss": result.metrics.get("train_loss"), "eval_loss": eval_loss,
        "eval_perplexity": math.exp(min(eval_loss, 50)) if eval_loss is not None and not objective.data_kind else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "batching": layout, "examples_per_row": round(per_row, 2) if per_row else None,
        "attention": attention, "attention_per_example": varlen,
        "loss": "trained_positions" if trained_loss else "model",
        "objective": objective.describe(), "reference": reference if objective.data_kind else None,
        **preference_figures(metrics.records),
        "label_smoothing": args.label_smoothing_factor,
        "liger_kernels": args.use_liger_kernel, "speedups": speedups.as_dict(),
        "method": cfg.model.method, "bf16": args.bf16, "translated_from_seed": cfg.seed_compat,
        "nonfinite_steps_skipped": guard.skipped_steps,
    }
    if is_main_process():
        artifacts.plot_losses(out / "metrics.jsonl", out / "loss.png")
        artifacts.write_summary(out, summary)  # the model cards quote it: cli.py writes them next (ship/card.py)
        print(f"tunesmith: trained {summary['steps']} steps in {summary['wall_seconds']}s; model in {final}", file=sys.stderr)
    return summary


def resolve_batching(batching: str, varlen: bool) -> str:
    """auto: one padding-free row per batch when attention can run per example (no padding, no
    masked-out work); otherwise padded rows, since a block mask over the whole batch costs more
    than the padding it saves."""
    if batching == "auto":
        return "padding_free" if varlen else "padded"
    return batching


def packed_step(per_row: float | None, batch: int) -> str:
    """What a step of packed rows holds: the batch size counts rows, so a packed step trains
    several times the examples (and the tokens, and the memory) of the same batch size unpacked."""
    if not per_row or per_row < 1.05:
        return ""
    return (f" ({per_row:.1f} examples per row: a step of {batch} rows trains ~{batch * per_row:.0f} examples; "
            f"per_device_train_batch_size {max(1, round(batch / per_row))} gives the unpacked step's tokens)")


def training_columns(ds, sampling: str = "random"):
    """The columns the collator needs, plus `length` for length-grouped sampling."""
    preference = "chosen_input_ids" in ds.column_names or "kl_input_ids" in ds.column_names
    keep = (*PAIR_COLUMNS, *UNPAIRED_COLUMNS) if preference else TRAIN_COLUMNS
    ds = ds.select_columns([c for c in keep if c in ds.column_names])
    if sampling in ("group_by_length", "batch_rebalance"):
        import pyarrow.compute as pc

        table = ds.with_format("arrow")[:]
        sides = [c for c in ("input_ids", "chosen_input_ids", "rejected_input_ids", "kl_input_ids") if c in table.column_names]
        lengths = [sum(n) for n in zip(*(pc.list_value_length(table[c]).to_pylist() for c in sides))]  # a pair: both sides
        ds = ds.add_column("length", lengths)
    return ds


def final_eval_loss(trainer: Trainer, records: list[dict]) -> float:
    """The eval loss of the final weights; evaluates only if the last logged eval is older."""
    last = next((r for r in reversed(records) if "eval_loss" in r), None)
    if last is not None and last["step"] == trainer.state.global_step and not trainer.args.load_best_model_at_end:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def check_rows_kind(ds, objective, data_dir: str) -> None:
    """The prepared rows must be what the objective trains on (SFT rows, pairs, unpaired rows)."""
    cols = set(ds.column_names)
    found = "pairs" if "chosen_input_ids" in cols else ("unpaired" if "kl_input_ids" in cols else "")
    if found != objective.data_kind:
        names = {"": "SFT rows", "pairs": "preference pairs", "unpaired": "unpaired (KTO) rows"}
        raise ConfigError(f"{data_dir} holds {names[found]}, but objective {objective.name} trains on {names[objective.data_kind]}",
                          "run `tunesmith prep` again with this config's objective (or `tunesmith run`, which prepares first)")


def check_reference(reference: str, cfg: Config, args) -> None:
    """Reference sources this run cannot give, refused before any work."""
    if reference == "adapter_off" and not cfg.model.trains_adapter:
        raise ConfigError("objective.reference: adapter_off needs an adapter, but model.method is full",
                          "set objective.reference: precomputed (or auto), or model.method: lora")
    env = lambda name: os.environ.get(name, "").lower() == "true"  # noqa: E731  (accelerate launch's own config)
    sharded = "DeepSpeed" if args.deepspeed or env("ACCELERATE_USE_DEEPSPEED") else \
        ("FSDP" if args.fsdp or env("ACCELERATE_USE_FSDP") else None)
    if reference == "precomputed" and sharded:
        # The pass runs before the Trainer shards and places the model (prepare), so not under these engines yet.
        raise ConfigError(f"objective.reference: precomputed is not supported under {sharded} yet",
                          "use model.method: lora (the reference is the base with the adapter off), or DDP")


def objective_line(objective, reference: str, trained_loss: bool) -> str:
    """The start line's words on what is optimised and where its inputs come from."""
    if not objective.data_kind:
        return f"loss {'at trained positions' if trained_loss else 'from the model'}"
    where = {"adapter_off": "reference: the base with the adapter off", "precomputed": "reference: precomputed once before training",
             "none": "reference-free"}[reference]
    return f"objective {objective.describe()}, {where}, answer log-probs {'at answer positions only' if trained_loss else 'from full logits'}"


def with_columns(ds, columns: dict[str, list[float]]):
    for name, values in columns.items():
        if name in ds.column_names:
            ds = ds.remove_columns(name)
        ds = ds.add_column(name, values)
    return ds


def preference_figures(records: list[dict]) -> dict:
    """The last logged preference figures, for summary.json."""
    keys = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
            "eval_rewards/accuracies", "eval_rewards/margins")
    out = {}
    for key in keys:
        last = next((r[key] for r in reversed(records) if key in r), None)
        if last is not None:
            out[key.replace("/", "_")] = last
    return out


def check_same_tokenizer(meta: dict | None, tokenizer, data_dir: str) -> None:
    if meta is None:
        return  # data prepared by another tool: nothing recorded to compare
    diffs = same_tokenizer(meta["tokenizer"], tokenizer_identity(tokenizer))
    if diffs:
        raise ModelError(f"{data_dir} was prepared with a different tokenizer ({meta['tokenizer']['name_or_path']}): "
                         + "; ".join(diffs), "run `tunesmith prep` again with this base_model, or train the model the data was made for")
