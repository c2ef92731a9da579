"""llm-foundry's batch sizes, duration, optimizer, scheduler, clipping, precision, intervals and
loggers -> the Trainer's arguments (tunesmith's training section), each with a note."""
from __future__ import annotations

from typing import Any

import torch

from tunesmith.config.compat import foundry_rules as rules
from tunesmith.errors import ConfigError

LOGGERS = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard", "comet_ml": "comet_ml"}


def training_section(cfg: dict, out: dict, loader: dict, notes: list[str]) -> dict:
    data = out["data"]
    t: dict[str, Any] = {"optim": "adamw_torch"}
    processes = rules.world_size()
    if "global_train_batch_size" not in cfg:
        raise ConfigError("global_train_batch_size: required key is missing")
    batch = rules.batch_plan(cfg["global_train_batch_size"], cfg.get("device_train_microbatch_size", "auto"), processes)
    t.update(per_device_train_batch_size=batch.per_device, gradient_accumulation_steps=batch.accumulation)
    notes.append(batch.note)
    if "device_eval_batch_size" in cfg:
        t["per_device_eval_batch_size"] = int(cfg["device_eval_batch_size"])
    if "max_duration" not in cfg:
        raise ConfigError("max_duration: required key is missing", "e.g. max_duration: 1ep")
    duration = rules.parse_duration(cfg["max_duration"], "max_duration")
    steps, note = rules.duration_to_trainer(duration, cfg["global_train_batch_size"])
    t.update(steps)
    notes.append(note)

    opt = dict(rules.section(cfg, "optimizer", required=True))
    if opt.pop("name", None) != "decoupled_adamw":
        raise ConfigError(f"optimizer.name: {cfg['optimizer'].get('name')!r} has no equivalent here", "use decoupled_adamw")
    lr = float(opt.pop("lr", 1e-3))
    betas = opt.pop("betas", [0.9, 0.95])
    wd, wd_note = rules.decoupled_weight_decay(float(opt.pop("weight_decay", 1e-5)), lr)
    t.update(learning_rate=lr, adam_beta1=float(betas[0]), adam_beta2=float(betas[1]),
             adam_epsilon=float(opt.pop("eps", 1e-8)), weight_decay=wd)
    if opt.pop("amsgrad", False):
        raise ConfigError("optimizer.amsgrad: not supported")
    if opt:
        raise ConfigError(f"optimizer: unknown key(s) {sorted(opt)}")
    notes.append(f"optimizer decoupled_adamw -> optim adamw_torch, lr {lr:g}, betas {t['adam_beta1']:g}/{t['adam_beta2']:g}, "
                 f"eps {t['adam_epsilon']:g}; {wd_note}" + ("; the Trainer does not decay biases and norm weights" if wd else ""))
    sched, sched_notes = rules.schedule(rules.section(cfg, "scheduler", required=True), lr, duration, cfg["global_train_batch_size"])
    t.update(sched)
    notes.extend(sched_notes)
    _clipping(cfg, t, notes)
    _precision(cfg, t, notes)
    _intervals(cfg, t, data, notes)
    t["seed"] = cfg.get("seed", 17)
    t["dataloader_drop_last"] = bool(loader["drop_last"])
    if not loader["shuffle"]:
        t["train_sampling_strategy"] = "sequential"
    notes.append(f"seed {t['seed']}, drop_last {t['dataloader_drop_last']}, shuffle {loader['shuffle']}; "
                 f"num_workers {loader['num_workers']} -> 0 "
                 "(rows are tokenized before training, so batches are built in the main process)")
    if t["dataloader_drop_last"] and "eval" in data:
        notes.append("train_loader.drop_last also applies to the eval set in the Trainer: a last partial eval batch is skipped")
    return t


def _clipping(cfg: dict, t: dict, notes: list[str]) -> None:
    algorithms = dict(cfg.get("algorithms") or {})
    clip = algorithms.pop("gradient_clipping", None)
    if algorithms:
        raise ConfigError(f"algorithms: {sorted(algorithms)} have no equivalent here", "only gradient_clipping is translated")
    if clip is None:
        t["max_grad_norm"] = 0.0
        notes.append("no algorithms.gradient_clipping -> max_grad_norm 0 (no clipping, as in foundry)")
        return
    if clip.get("clipping_type", "norm") != "norm":
        raise ConfigError(f"algorithms.gradient_clipping.clipping_type: {clip.get('clipping_type')!r} is not supported", "use norm")
    t["max_grad_norm"] = float(clip.get("clipping_threshold", 1.0))
    notes.append(f"algorithms.gradient_clipping norm {t['max_grad_norm']:g} -> max_grad_norm {t['max_grad_norm']:g}")


def _precision(cfg: dict, t: dict, notes: list[str]) -> None:
    precision = cfg.get("precision", "amp_bf16")
    if precision == "fp32":
        t.update(bf16=False, fp16=False)
    elif precision == "amp_bf16":
        t.update(bf16=True, fp16=False)
    elif precision == "amp_fp16":
        if not torch.cuda.is_available():
            raise ConfigError("precision: amp_fp16 needs a CUDA GPU and this machine has none", "use amp_bf16 or fp32")
        t.update(bf16=False, fp16=True)
    else:
        raise ConfigError(f"precision: {precision!r} is not supported", "use fp32, amp_bf16 or amp_fp16")
    notes.append(f"precision {precision} -> fp32 weights, bf16 {t['bf16']}, fp16 {t['fp16']}"
                 + ("" if "precision" in cfg else " (foundry's default)"))


def _intervals(cfg: dict, t: dict, data: dict, notes: list[str]) -> None:
    if "eval" in data:
        evals, note = rules.interval_to_trainer(cfg.get("eval_interval", 1), "eval_interval", "eval")
        t.update(evals)
        t["eval_on_start"] = bool(cfg.get("eval_first", False))
        notes.append(f"{note}; eval_first -> eval_on_start {t['eval_on_start']}")
    elif "eval_interval" in cfg or "eval_first" in cfg:
        notes.append("ignored: eval_interval / eval_first (no eval_loader)")
    logs, note = rules.interval_to_trainer(cfg.get("console_log_interval", "1ba"), "console_log_interval", "logging")
    t.update(logs)
    t["disable_tqdm"] = not cfg.get("progress_bar", False)
    notes.append(f"{note}; progress_bar {not t['disable_tqdm']}")
    names = []
    for logger in cfg.get("loggers") or {}:
        if logger not in LOGGERS:
            raise ConfigError(f"loggers.{logger}: no Trainer integration", f"use one of {', '.join(sorted(LOGGERS))}")
        names.append(LOGGERS[logger])
    if names:
        t["report_to"] = names
        notes.append(f"loggers -> report_to {names} (their settings come from the integrations' environment variables)")
