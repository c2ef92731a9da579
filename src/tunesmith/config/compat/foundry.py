"""llm-foundry's fine-tuning YAML (what `composer train.py X.yaml` reads) -> tunesmith's schema.

The run becomes the equivalent Hugging Face Trainer run. Every translated key adds a note that
the CLI prints; a key that cannot be honoured stops the run before any work, naming the key; a
key that only shapes foundry's logging or its own evaluation is listed as ignored. Paths and the
preprocessing module resolve against the working directory, as foundry users expect.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.compat import foundry_rules as rules
from tunesmith.config.compat.interpolate import interpolate
from tunesmith.config.dotted import set_dotted
from tunesmith.config.schema import builder_for
from tunesmith.errors import ConfigError

SOURCE = "llm-foundry"
# Top-level keys that change nothing a Trainer run can honour: logging, foundry's own evaluation, allocator knobs.
IGNORED = {"callbacks", "icl_tasks", "icl_subset_num_batches", "icl_seq_len", "eval_gauntlet", "python_log_level",
           "log_config", "metadata", "flatten_metadata", "dist_timeout", "max_split_size_mb", "expandable_segments",
           "cuda_load_lazy", "spin_dataloaders", "profiler", "compile_config", "save_overwrite", "save_latest_filename",
           "save_filename", "save_weights_only", "save_ignore_keys", "only_hf_checkpoint", "only_composer_checkpoint",
           "log_to_console", "eval_subset_num_batches", "accumulate_train_batch_on_tokens", "device_train_batch_size",
           "n_gpus", "device_train_grad_accum", "variables"}
REFUSED = {"load_path": "Composer checkpoints cannot be loaded into a Hugging Face model here; convert it with "
                        "llm-foundry's scripts/inference/convert_composer_to_hf.py and point model.pretrained_model_name_or_path at the result",
           "code_paths": "tunesmith does not import code to extend foundry's registries",
           "tp_config": "tensor parallelism has no Trainer equivalent in tunesmith",
           "eval_loaders": "give one eval_loader",
           "train_subset_num_batches": "the Trainer always runs whole epochs; use max_duration in batches"}
TRANSLATED = {"max_seq_len", "run_name", "model", "tokenizer", "train_loader", "eval_loader", "scheduler", "optimizer",
              "algorithms", "max_duration", "eval_interval", "eval_first", "global_train_batch_size", "seed",
              "device_eval_batch_size", "device_train_microbatch_size", "precision", "progress_bar",
              "console_log_interval", "save_folder", "save_interval", "save_num_checkpoints_to_keep", "autoresume",
              "loggers", "fsdp_config", "load_weights_only", "load_strict_model_weights", "load_ignore_keys"}
LOGGERS = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard", "comet_ml": "comet_ml"}


def is_foundry(raw: dict[str, Any]) -> bool:
    model = raw.get("model")
    return "train_loader" in raw or ("max_duration" in raw and isinstance(model, dict) and "name" in model)


def translate(raw: dict[str, Any], overrides: list[tuple[str, Any]], cwd: Path, config_path: Path) -> tuple[dict, list[str]]:
    """(foundry YAML, foundry-style KEY=VALUE overrides) -> (tunesmith raw config, notes)."""
    notes: list[str] = []
    original = _quiet_interpolate(raw)  # before overrides: what the file itself names
    for key, value in overrides:
        set_dotted(raw, key, value)
        notes.append(f"override {key}={value!r}")
    cfg = interpolate(raw, notes)
    _check_keys(cfg, notes)
    name = _run_name(cfg, config_path, notes)
    out: dict[str, Any] = {"name": name}
    out["model"] = _model(cfg, original, out, cwd, notes)
    out["data"], loader = _data(cfg, cwd, notes)
    out["training"] = _training(cfg, out, loader, notes)
    _output(cfg, out, name, cwd, notes)
    return out, notes


def _quiet_interpolate(raw: dict) -> dict | None:
    try:
        return interpolate(raw, [])
    except ConfigError:
        return None


def _check_keys(cfg: dict, notes: list[str]) -> None:
    for key in cfg:
        if key in REFUSED and cfg[key] is not None:
            raise ConfigError(f"{key}: cannot be honoured", REFUSED[key])
    unknown = set(cfg) - IGNORED - set(REFUSED) - TRANSLATED
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} (llm-foundry stops on these too)",
                          "remove them or place them under variables:")
    ignored = sorted(k for k in cfg if k in IGNORED and k != "variables" and cfg[k] is not None)
    if ignored:
        notes.append(f"ignored (foundry logging / its own evaluation / allocator settings): {', '.join(ignored)}")
    if cfg.get("fsdp_config"):
        if rules.world_size() > 1:
            raise ConfigError("fsdp_config: FSDP over several processes is not translated",
                              "run on one process, or configure FSDP with accelerate's own config")
        notes.append("ignored: fsdp_config (one process: FSDP changes nothing)")


def _run_name(cfg: dict, config_path: Path, notes: list[str]) -> str:
    given = cfg.get("run_name") or os.environ.get("RUN_NAME") or config_path.stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(given)).strip("-") or "run"
    notes.append(f"run_name -> name {name!r}" + ("" if cfg.get("run_name") else " (run_name empty: $RUN_NAME or the file name)"))
    return name


# ---- model ------------------------------------------------------------------------------------

def _model(cfg: dict, original: dict | None, out: dict, cwd: Path, notes: list[str]) -> dict:
    m = dict(_section(cfg, "model", required=True))
    if m.pop("name", None) != "hf_causal_lm":
        raise ConfigError(f"model.name: {cfg['model'].get('name')!r} is not a Hugging Face model class",
                          "tunesmith trains Hugging Face causal LMs: use name: hf_causal_lm")
    path = m.pop("pretrained_model_name_or_path", None)
    if not path:
        raise ConfigError("model.pretrained_model_name_or_path: required key is missing")
    if m.pop("pretrained", True) is not True:
        raise ConfigError("model.pretrained: false (random initialisation) is not supported", "fine-tuning starts from pretrained weights")
    out["base_model"] = _local_or_hub(str(path), cwd)
    notes.append(f"model.pretrained_model_name_or_path -> base_model {out['base_model']}")
    model: dict[str, Any] = {"dtype": "float32", "trust_remote_code": bool(m.pop("trust_remote_code", True))}
    notes.append(f"model.trust_remote_code -> {model['trust_remote_code']}" + ("" if "trust_remote_code" in cfg["model"] else " (foundry's default)"))
    attention = m.pop("attn_implementation", None) or ("flash_attention_2" if m.pop("use_flash_attention_2", False) else None)
    m.pop("use_flash_attention_2", None)
    if attention:
        model["attn_implementation"] = attention
        notes.append(f"model attention -> model.attn_implementation {model['attn_implementation']}")
    peft = m.pop("peft_config", None)
    if peft:
        model.update(method="lora", lora=_lora(dict(peft), notes))
    for key in ("pretrained_lora_id_or_path", "load_in_8bit", "config_overrides"):
        if m.get(key):
            raise ConfigError(f"model.{key}: not supported", "load the model as a plain Hugging Face folder")
        m.pop(key, None)
    dropped = sorted(k for k in m if k in {"init_device", "use_auth_token", "use_train_metrics", "additional_train_metrics",
                                           "additional_eval_metrics", "should_save_peft_only", "allow_embedding_resizing"})
    if dropped:
        notes.append(f"ignored: model.{', model.'.join(dropped)} (loading/metrics details; final/ holds the adapter for LoRA)")
    unknown = set(m) - set(dropped)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {sorted(unknown)}")
    _tokenizer(cfg, original, out, cwd, notes)
    return model


def _lora(peft: dict, notes: list[str]) -> dict:
    if str(peft.pop("peft_type", "LORA")).upper() != "LORA":
        raise ConfigError("model.peft_config.peft_type: only LORA is supported")
    lora = {new: peft.pop(old) for old, new in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                                               ("target_modules", "target_modules")) if old in peft}
    for key in ("task_type", "bias", "inference_mode"):
        peft.pop(key, None)
    if peft:
        raise ConfigError(f"model.peft_config: {sorted(peft)} not supported", "tunesmith sets r, lora_alpha, lora_dropout, target_modules")
    notes.append(f"model.peft_config -> model.method lora {lora}"
                 + ("" if "target_modules" in lora else " (no target_modules: every linear layer of the blocks)"))
    return lora


def _tokenizer(cfg: dict, original: dict | None, out: dict, cwd: Path, notes: list[str]) -> None:
    tok = dict(cfg.get("tokenizer") or {})
    name = tok.pop("name", None)
    kwargs = dict(tok.pop("kwargs", None) or {})
    if tok:
        raise ConfigError(f"tokenizer: unknown key(s) {sorted(tok)}")
    first_model = ((original or {}).get("model") or {}).get("pretrained_model_name_or_path")
    if name and str(name) != str(cfg["model"]["pretrained_model_name_or_path"]):
        if str(name) == str(first_model):  # the model was overridden; the tokenizer named the same model
            notes.append(f"tokenizer.name {name} (the file's model) -> follows the overridden model {out['base_model']}")
        else:
            out["tokenizer"] = _local_or_hub(str(name), cwd)
            notes.append(f"tokenizer.name -> tokenizer {out['tokenizer']}")
    if kwargs.pop("model_max_length", None) is not None:
        notes.append("ignored: tokenizer.kwargs.model_max_length (lengths follow the loader's max_seq_len)")
    if kwargs:
        raise ConfigError(f"tokenizer.kwargs: {sorted(kwargs)} not supported", "tunesmith loads the tokenizer as saved")


def _local_or_hub(value: str, cwd: Path) -> str:
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() else cwd / p
    return str(candidate.resolve()) if candidate.exists() else value


# ---- data -------------------------------------------------------------------------------------

def _data(cfg: dict, cwd: Path, notes: list[str]) -> tuple[dict, dict]:
    """-> (tunesmith's data section, the train loader's own settings: shuffle, drop_last, num_workers)."""
    train, train_opts, loader = _loader(_section(cfg, "train_loader", required=True), "train_loader", cwd, notes)
    data: dict[str, Any] = {"train": train, "prompt_format": "plain", "seed": cfg.get("seed", 17), **train_opts}
    notes.append("prompt/response rows -> prompt + response, as foundry concatenates them; tunesmith ends each "
                 "answer with EOS so the model learns to stop")
    if cfg.get("eval_loader") is not None:
        if isinstance(cfg["eval_loader"], list):
            raise ConfigError("eval_loader: a list of eval loaders is not supported", "give one eval_loader")
        data["eval"], eval_opts, _ = _loader(cfg["eval_loader"], "eval_loader", cwd, notes)
        differs = sorted(k for k in set(eval_opts) | set(train_opts) if k != "packing" and eval_opts.get(k) != train_opts.get(k))
        if differs:
            raise ConfigError(f"eval_loader.dataset: {', '.join(differs)} differ from train_loader's",
                              "tunesmith renders both splits the same way; use the same settings")
    return data, loader


def _loader(loader: dict, key: str, cwd: Path, notes: list[str]) -> tuple[dict, dict, dict]:
    loader = dict(loader)
    if loader.get("name") != "finetuning":
        raise ConfigError(f"{key}.name: {loader.get('name')!r} is not supported", "tunesmith reads finetuning loaders (name: finetuning)")
    ds = dict(loader.get("dataset") or {})
    for stream_key in ("remote", "local", "streams"):
        if ds.get(stream_key):
            raise ConfigError(f"{key}.dataset.{stream_key}: MDS streaming datasets are not supported",
                              "convert to JSONL/Parquet and use hf_name: json with hf_kwargs.data_files")
    if ds.pop("decoder_only_format", True) is not True:
        raise ConfigError(f"{key}.dataset.decoder_only_format: false (encoder-decoder) is not supported", "tunesmith trains decoder-only models")
    hf_name = ds.pop("hf_name", None)
    if not hf_name:
        raise ConfigError(f"{key}.dataset.hf_name: required key is missing")
    source: dict[str, Any] = {"split": ds.pop("split", None)}
    if source["split"] is None:
        raise ConfigError(f"{key}.dataset.split: required key is missing", "e.g. split: train")
    kwargs = dict(ds.pop("hf_kwargs", None) or {})
    if hf_name in ("json", "csv", "parquet", "text", "arrow") or builder_for(str(hf_name)):
        source["path"] = hf_name if not builder_for(str(hf_name)) else builder_for(str(hf_name))
    else:
        source["path"] = _local_or_hub(str(hf_name), cwd)
    if "data_dir" in kwargs:
        source["data_dir"] = str((cwd / Path(kwargs.pop("data_dir")).expanduser()).resolve())
        notes.append(f"{key}.dataset.hf_kwargs.data_dir -> {source['data_dir']} (relative to the working directory)")
    if "data_files" in kwargs:
        source["data_files"] = _files(kwargs.pop("data_files"), cwd)
        notes.append(f"{key}.dataset.hf_kwargs.data_files -> {source['data_files']} (relative to the working directory)")
    if "name" in kwargs:
        source["name"] = kwargs.pop("name")
    if kwargs:
        source["kwargs"] = kwargs
    opts: dict[str, Any] = {}
    fn = ds.pop("preprocessing_fn", None)
    if isinstance(fn, dict):
        if set(fn) != {"prompt", "response"}:
            raise ConfigError(f"{key}.dataset.preprocessing_fn: a column mapping needs exactly the keys prompt and response")
        opts["columns"] = {"prompt": fn["prompt"], "response": fn["response"]}
        notes.append(f"{key}.dataset.preprocessing_fn mapping -> data.columns {opts['columns']}")
    elif fn:
        opts["preprocessing_fn"] = _preprocessing_fn(str(fn), f"{key}.dataset.preprocessing_fn", cwd, notes)
    if "max_seq_len" in ds:
        opts["max_length"] = int(ds.pop("max_seq_len"))
        notes.append(f"{key}.dataset.max_seq_len {opts['max_length']} -> data.max_length; differs on purpose: a longer "
                     "example is dropped and counted in the prep report (foundry cuts it to the first max_seq_len tokens)")
    opts.update(_targets(ds, key))
    packing = ds.pop("packing_ratio", None)
    if packing not in (None, 1, 1.0):
        opts["packing"] = True
        notes.append(f"{key}.dataset.packing_ratio {packing} -> data.packing: examples are packed into max_seq_len rows "
                     "ahead of time; differs on purpose: packed examples never attend to each other, and each step "
                     "takes batch-size packed rows")
    shuffle = ds.pop("shuffle", True)
    for harmless in ("safe_load", "allow_pad_trimming", "shuffle_seed", "download_retry", "download_timeout",
                     "token_encoding_type", "max_retries"):
        ds.pop(harmless, None)
    if ds.pop("seq_parallel_replication", 1) not in (None, 1):
        raise ConfigError(f"{key}.dataset.seq_parallel_replication: sequence parallelism is not supported")
    if ds:
        raise ConfigError(f"{key}.dataset: unknown key(s) {sorted(ds)}")
    settings = {"shuffle": shuffle, "drop_last": loader.pop("drop_last", False), "num_workers": loader.pop("num_workers", 0)}
    return source, opts, settings


def _targets(ds: dict, key: str) -> dict:
    prompts, responses = str(ds.pop("target_prompts", "none")).lower(), str(ds.pop("target_responses", "last")).lower()
    if prompts not in ("none", "all"):
        raise ConfigError(f"{key}.dataset.target_prompts: {prompts!r} is not supported", "use none or all")
    if responses not in ("last", "all"):
        raise ConfigError(f"{key}.dataset.target_responses: {responses!r} is not supported", "use last or all")
    return {"train_on_prompt": prompts == "all", "assistant_turns": responses}


def _files(value: Any, cwd: Path) -> Any:
    def one(f: str) -> str:
        return f if "://" in f or Path(f).is_absolute() else str((cwd / f).resolve())
    if isinstance(value, str):
        return one(value)
    if isinstance(value, list):
        return [one(f) for f in value]
    if isinstance(value, dict):
        return {k: _files(v, cwd) for k, v in value.items()}
    raise ConfigError(f"hf_kwargs.data_files: {value!r} is not a path, list or mapping")


def _preprocessing_fn(spec: str, key: str, cwd: Path, notes: list[str]) -> str:
    """`package.module:fn` imports from the working directory, as foundry's train.py does."""
    target, sep, fn = spec.rpartition(":")
    if not sep:
        raise ConfigError(f"{key}: {spec!r} names one of foundry's registered preprocessing functions, which tunesmith does not ship",
                          "give module.path:function, or a column mapping {prompt: col, response: col}")
    path = Path(target) if target.endswith(".py") else Path(*target.split(".")).with_suffix(".py")
    candidate = path if path.is_absolute() else cwd / path
    if candidate.is_file():
        chosen = f"{candidate.resolve()}:{fn}"
        notes.append(f"{key} {spec} -> {chosen} (from the working directory)")
        return chosen
    notes.append(f"{key} {spec}: no {path} under the working directory {cwd}; importing it as an installed module")
    return spec


# ---- training ---------------------------------------------------------------------------------

def _training(cfg: dict, out: dict, loader: dict, notes: list[str]) -> dict:
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

    opt = dict(_section(cfg, "optimizer", required=True))
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
    sched, sched_notes = rules.schedule(_section(cfg, "scheduler", required=True), lr, duration, cfg["global_train_batch_size"])
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


def _output(cfg: dict, out: dict, name: str, cwd: Path, notes: list[str]) -> None:
    t, model = out["training"], out["model"]
    folder = cfg.get("save_folder")
    if folder:
        folder = str(folder).replace("{run_name}", name)
        if "://" in folder:
            model["upload_to"] = [folder]
            out["output_dir"] = str(cwd / "outputs" / name)
            notes.append(f"save_folder {folder} -> model.upload_to (the run is written to {out['output_dir']} and copied there at the end)")
        else:
            out["output_dir"] = str((cwd / folder).resolve())
            notes.append(f"save_folder -> output_dir {out['output_dir']} (checkpoints/ and final/ inside)")
        saves, note = rules.interval_to_trainer(cfg.get("save_interval", "1000ba"), "save_interval", "save")
        t.update(saves)
        keep = cfg.get("save_num_checkpoints_to_keep", -1)
        t["save_total_limit"] = None if keep is None or keep < 0 else max(int(keep), 1)
        notes.append(f"{note}; save_num_checkpoints_to_keep {keep} -> save_total_limit {t['save_total_limit']}")
    else:
        out["output_dir"] = str(cwd / "outputs" / name)
        t["save_strategy"] = "no"
        notes.append(f"no save_folder -> no checkpoints (as in foundry); the final model is still written to {out['output_dir']}/final")
    model["resume"] = "auto" if cfg.get("autoresume") else "never"
    if cfg.get("autoresume"):
        notes.append("autoresume -> model.resume auto (continues from the latest complete checkpoint)")


def _section(cfg: dict, key: str, required: bool = False) -> dict:
    value = cfg.get(key)
    if value is None and required:
        raise ConfigError(f"{key}: required key is missing")
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value or {}


# Error messages name the keys the user wrote, not the translated ones.
KEY_NAMES = {"base_model": "model.pretrained_model_name_or_path", "tokenizer": "tokenizer.name",
             "data.train": "train_loader.dataset", "data.eval": "eval_loader.dataset",
             "data.max_length": "train_loader.dataset.max_seq_len", "model.lora": "model.peft_config",
             "model.attn_implementation": "model.attn_implementation", "name": "run_name", "output_dir": "save_folder"}
