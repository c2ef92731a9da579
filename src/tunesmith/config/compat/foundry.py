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

from tunesmith.config.compat import foundry_rules as rules
from tunesmith.config.compat.foundry_data import data_sections, local_or_hub
from tunesmith.config.compat.foundry_training import training_section
from tunesmith.config.compat.interpolate import interpolate
from tunesmith.config.dotted import set_dotted
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
    out["data"], loader = data_sections(cfg, cwd, notes)
    out["training"] = training_section(cfg, out, loader, notes)
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
    m = dict(rules.section(cfg, "model", required=True))
    if m.pop("name", None) != "hf_causal_lm":
        raise ConfigError(f"model.name: {cfg['model'].get('name')!r} is not a Hugging Face model class",
                          "tunesmith trains Hugging Face causal LMs: use name: hf_causal_lm")
    path = m.pop("pretrained_model_name_or_path", None)
    if not path:
        raise ConfigError("model.pretrained_model_name_or_path: required key is missing")
    if m.pop("pretrained", True) is not True:
        raise ConfigError("model.pretrained: false (random initialisation) is not supported", "fine-tuning starts from pretrained weights")
    out["base_model"] = local_or_hub(str(path), cwd)
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
            out["tokenizer"] = local_or_hub(str(name), cwd)
            notes.append(f"tokenizer.name -> tokenizer {out['tokenizer']}")
    if kwargs.pop("model_max_length", None) is not None:
        notes.append("ignored: tokenizer.kwargs.model_max_length (lengths follow the loader's max_seq_len)")
    if kwargs:
        raise ConfigError(f"tokenizer.kwargs: {sorted(kwargs)} not supported", "tunesmith loads the tokenizer as saved")


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


# Error messages name the keys the user wrote, not the translated ones.
KEY_NAMES = {"base_model": "model.pretrained_model_name_or_path", "tokenizer": "tokenizer.name",
             "data.train": "train_loader.dataset", "data.eval": "eval_loader.dataset",
             "data.max_length": "train_loader.dataset.max_seq_len", "model.lora": "model.peft_config",
             "model.attn_implementation": "model.attn_implementation", "name": "run_name", "output_dir": "save_folder"}
