"""The two-step workflow's YAML shapes (Saturn Cloud's dataprep.yaml / finetune.yaml) -> tunesmith's schema.

Those files name registered methods with `{method: ..., kwargs: {...}}`. We translate each key we
understand, refuse the ones we cannot honour, and return one note per translation so the
output can say what happened. What the framework fills in when a key is absent (the prompt
method, the format by model, LoRA always on) is filled in the same way, and said.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.config.compat.two_step_registry import FORMATS, PROMPTS, registry_entry
from tunesmith.errors import ConfigError

SOURCE = "two-step workflow (saturncloud/llm)"
# Error messages name the keys the user wrote, not the translated ones.
KEY_NAMES = {"data.train": "source_config", "data.prompt": "prompt_config.kwargs", "data.prompt_format": "prompt_format_config",
             "data.output": "dataset_writer_config.kwargs", "data.max_length": "chunksize", "data.num_proc": "num_proc",
             "training": "training_arguments", "model.lora": "lora_config", "model.dtype": "torch_dtype",
             "output_dir": "local_output", "train_data": "train_dataset_config", "eval_data": "eval_dataset_config"}
WRITERS = {"save_to_disk": "dataset_path", "to_json": "path_or_buf", "to_parquet": "path_or_buf", "to_csv": "path_or_buf"}

DATAPREP_KEYS = {"source_config", "prompt_config", "prompt_format_config", "dataset_writer_config", "chunksize", "ignore_index"}
FINETUNE_KEYS = {"train_dataset_config", "eval_dataset_config", "training_arguments", "lora_config", "local_output",
                 "additional_output_paths", "torch_dtype", "load_in_4bit", "load_in_8bit", "use_gradient_checkpointing",
                 "resume_from_checkpoint", "experiment_tracking_config", "quantization_config"}
# The reference framework's own defaults, applied so its users get the run they expect.
SEED_TRAINING_DEFAULTS = dict(optim="adamw_torch", num_train_epochs=1, gradient_accumulation_steps=2,
                              per_device_train_batch_size=2, per_device_eval_batch_size=2, gradient_checkpointing=True,
                              logging_strategy="steps", logging_steps=10, save_steps=30, save_strategy="steps")


def translate_if_seed(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    keys = set(raw)
    if not keys & (DATAPREP_KEYS | FINETUNE_KEYS):
        return raw, []
    if "data" in raw:
        raise ConfigError("config mixes tunesmith's `data:` section with seed-style keys "
                          f"({', '.join(sorted(keys & (DATAPREP_KEYS | FINETUNE_KEYS)))})", "use one style per file")
    out: dict[str, Any] = {k: raw[k] for k in ("name", "base_model", "tokenizer", "output_dir") if k in raw}
    notes: list[str] = []
    data: dict[str, Any] = {}
    if "num_proc" in raw:
        data["num_proc"] = raw["num_proc"]
    _dataprep(raw, data, notes)
    _finetune(raw, out, data, notes)
    if keys_present(raw, DATAPREP_KEYS) and "source_config" not in raw:
        raise ConfigError("source_config: required key is missing",
                          "say where the rows come from, e.g. {method: load_from_disk, kwargs: {dataset_path: ...}}")
    out["data"] = data
    unknown = keys - DATAPREP_KEYS - FINETUNE_KEYS - {"name", "base_model", "tokenizer", "output_dir", "num_proc"}
    if unknown:
        raise ConfigError(f"seed-style config: unknown key(s) {sorted(unknown)}", "remove them or use tunesmith's own schema")
    return out, notes


def _method(section: dict, where: str) -> tuple[str, dict]:
    if not isinstance(section, dict) or "method" not in section:
        raise ConfigError(f"{where}: expected {{method: ..., kwargs: {{...}}}}")
    return section["method"], dict(section.get("kwargs") or {})


def _source(section: dict, where: str, notes: list[str]) -> dict:
    method, kw = _method(section, where)
    if method == "load_from_disk":
        path = kw.pop("dataset_path", None) or kw.pop("path", None)
        src = {"from_disk": path}
    elif method == "load_dataset":
        src = {k: kw.pop(k) for k in ("path", "name", "data_files", "data_dir", "split", "storage_options") if k in kw}
        if kw:
            src["kwargs"] = kw
            kw = {}
    elif "::" in method:
        src = {"function": method.replace("::", ":")}
    else:
        raise ConfigError(f"{where}.method: {method!r} is not load_from_disk, load_dataset or module::function")
    if kw:
        raise ConfigError(f"{where}.kwargs: {sorted(kw)} cannot be passed", "tunesmith calls the function without arguments")
    notes.append(f"{where} ({method}) -> data source {src}")
    return src


def _dataprep(raw: dict, data: dict, notes: list[str]) -> None:
    if not keys_present(raw, DATAPREP_KEYS):
        return
    if "source_config" in raw:
        data["train"] = _source(raw["source_config"], "source_config", notes)
    _prompt(raw, data, notes)
    _prompt_format(raw, data, notes)
    data["output_layout"] = "dataset"
    if "dataset_writer_config" in raw:
        method, kw = _method(raw["dataset_writer_config"], "dataset_writer_config")
        if method not in WRITERS:
            raise ConfigError(f"dataset_writer_config.method: {method!r} is not registered", f"use one of {', '.join(WRITERS)}")
        data["output"] = kw.pop(WRITERS[method], None) or kw.pop("path", None)
        if not data["output"]:
            raise ConfigError(f"dataset_writer_config.kwargs.{WRITERS[method]}: required key is missing")
        if kw:
            raise ConfigError(f"dataset_writer_config.kwargs: {sorted(kw)} cannot be passed", f"give only {WRITERS[method]}")
        data["writer"] = method
        notes.append(f"dataset_writer_config ({method}) -> one Dataset (input_ids, labels, attention_mask, full_text) "
                     f"at {data['output']!r}, as the framework writes it")
    if "chunksize" in raw:
        data["max_length"] = raw["chunksize"]
        notes.append(f"chunksize {raw['chunksize']} -> data.max_length; differs on purpose: one example per row, never "
                     "concatenated with others into chunksize rows; longer examples are dropped and counted, as before")
    if raw.get("ignore_index", -100) != -100:
        raise ConfigError("ignore_index: tunesmith masks with -100 (what transformers' loss ignores); other values are not supported")


def _prompt(raw: dict, data: dict, notes: list[str]) -> None:
    """A registered prompt method -> data.prompt: the method's templates, then the user's kwargs."""
    method, kw = _method(raw["prompt_config"], "prompt_config") if raw.get("prompt_config") else ("DefaultPrompt", {})
    if method not in PROMPTS:
        raise ConfigError(f"prompt_config.method: {method!r} is not registered", f"use one of {', '.join(PROMPTS)}")
    if kw.pop("text_key", "text") != "text":
        raise ConfigError("prompt_config.kwargs.text_key: only 'text' is supported", "write {text} in the templates")
    if "examples" in kw:  # the framework's Message(input, response, contexts)
        kw["examples"] = [{("context" if k == "contexts" else k): v for k, v in ex.items()} for ex in kw["examples"]]
    data["prompt"] = {**PROMPTS[method], **kw}
    shown = {k: v for k, v in data["prompt"].items() if k.endswith("template")}
    why = "" if raw.get("prompt_config") else " (no prompt_config: the framework's default method)"
    notes.append(f"prompt_config {method}{why} -> data.prompt {shown}"
                 + (f", {len(data['prompt']['examples'])} few-shot examples (masked)" if data["prompt"].get("examples") else ""))


def _prompt_format(raw: dict, data: dict, notes: list[str]) -> None:
    if raw.get("prompt_format_config"):
        method, kw = _method(raw["prompt_format_config"], "prompt_format_config")
        if method not in FORMATS and "::" not in method:
            raise ConfigError(f"prompt_format_config.method: {method!r} is not registered", f"use one of {', '.join(FORMATS)}")
        if kw or "::" in method:
            raise ConfigError("prompt_format_config: custom role markers are not translated",
                              "name a registered format, or write a tunesmith config with data.prompt_format as a mapping")
        data["prompt_format"] = FORMATS[method]
        notes.append(f"prompt_format_config {method} -> data.prompt_format {data['prompt_format']}")
        return
    base = str(raw.get("base_model") or "")
    fmt, _, found = registry_entry(base)
    data["prompt_format"] = fmt
    notes.append(f"no prompt_format_config -> data.prompt_format {fmt}: "
                 + (f"the framework's model registry entry for {base}" if found else
                    f"{base or 'base_model'} is not in the framework's model registry, so its generic format "
                    "(roles separated by newlines)"))


def _finetune(raw: dict, out: dict, data: dict, notes: list[str]) -> None:
    if not keys_present(raw, FINETUNE_KEYS):
        return
    model: dict[str, Any] = {}
    user_training = dict(raw.get("training_arguments") or {})
    _check_training_keys(user_training)
    defaults = dict(SEED_TRAINING_DEFAULTS)
    if raw.get("eval_dataset_config"):
        defaults.update(eval_strategy="steps", eval_steps=5)
    training = {**defaults, **user_training}
    if "evaluation_strategy" in training:  # renamed in transformers 4.46
        training["eval_strategy"] = training.pop("evaluation_strategy")
        training.pop("evaluation_strategy", None)
        notes.append("training_arguments.evaluation_strategy -> eval_strategy")
    if "use_gradient_checkpointing" in raw:
        training["gradient_checkpointing"] = raw["use_gradient_checkpointing"]
    training.pop("output_dir", None)
    out["training"] = training
    notes.append("training_arguments -> training (with the reference framework's defaults: batch 2, accumulation 2, "
                 "gradient checkpointing, save every 30 steps" + (", eval every 5 steps" if raw.get("eval_dataset_config") else "") + ")")
    for key, target in (("train_dataset_config", "train_data"), ("eval_dataset_config", "eval_data")):
        if raw.get(key):
            out[target] = _prepared_path(raw[key], key)
            notes.append(f"{key} -> {target} {out[target]!r}")
    if "local_output" in raw:
        out["output_dir"] = raw["local_output"]
        notes.append(f"local_output -> output_dir {raw['local_output']!r} (the model is written to final/, not final_output/)")
    _lora(raw, model, notes)
    _dtype(raw, model, notes)
    if raw.get("resume_from_checkpoint", True):  # the reference framework's default is to resume
        model["resume"] = "auto"
        notes.append("resume_from_checkpoint (default true) -> model.resume auto")
    if raw.get("additional_output_paths"):
        model["upload_to"] = list(raw["additional_output_paths"])
        notes.append("additional_output_paths -> model.upload_to (copied when training ends)")
    if raw.get("experiment_tracking_config"):
        method, _ = _method(raw["experiment_tracking_config"], "experiment_tracking_config")
        training["report_to"] = [method]
        notes.append(f"experiment_tracking_config -> training.report_to [{method}] (configure it with its env variables)")
    if raw.get("quantization_config"):
        raise ConfigError("quantization_config is not supported", "use load_in_4bit or load_in_8bit")
    out["model"] = model
    data.setdefault("output", out.get("train_data"))


def _check_training_keys(training: dict) -> None:
    from tunesmith.config.training_keys import OWNED, valid_fields

    import difflib

    valid = valid_fields() | {"evaluation_strategy"}
    for key in training:
        if key not in valid and key not in OWNED:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            raise ConfigError(f"training_arguments.{key}: unknown key" + (f"; did you mean '{close[0]}'?" if close else
                              "; not a TrainingArguments field in this transformers version"))


def _prepared_path(section: dict, key: str) -> str:
    method, kw = _method(section, key)
    if method == "load_from_disk":
        return kw.get("dataset_path") or kw.get("path")
    if method == "load_dataset" and kw.get("data_files"):  # what to_json / to_parquet wrote
        files = kw["data_files"]
        if not isinstance(files, str):
            raise ConfigError(f"{key}.kwargs.data_files: give the one file dataprep wrote")
        return files
    raise ConfigError(f"{key}.method: training reads prepared data with load_from_disk "
                      f"(or load_dataset with data_files), got {method!r}")


def _lora(raw: dict, model: dict, notes: list[str]) -> None:
    """LoRA is always on in the framework: its registry's defaults per model, then the user's lora_config."""
    _, defaults, found = registry_entry(str(raw.get("base_model") or ""))
    lc = {**defaults, **dict(raw.get("lora_config") or {})}
    lora = {k2: lc.pop(k1) for k1, k2 in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                                          ("target_modules", "target_modules")) if k1 in lc}
    ignored = {k: lc.pop(k) for k in ("task_type", "bias", "inference_mode") if k in lc}
    if lc:
        raise ConfigError(f"lora_config: {sorted(lc)} not supported", "tunesmith sets r, lora_alpha, lora_dropout, target_modules")
    where = "lora_config" if raw.get("lora_config") is not None else "no lora_config"
    origin = "the framework's registry defaults for this model" if found else "the framework's generic defaults (peft's)"
    if "target_modules" not in lora:
        targets = peft_default_targets(str(raw.get("base_model") or ""))
        if targets:
            lora["target_modules"] = targets
            origin += f", peft's default target modules for this architecture {targets}"
        else:
            origin += "; peft's default target modules are unknown without the model's config: every linear layer of the blocks"
    quantized = raw.get("load_in_4bit") or raw.get("load_in_8bit")
    model["lora"] = lora
    model["method"] = "qlora" if quantized and torch.cuda.is_available() else "lora"
    if raw.get("load_in_8bit"):
        model["quantization_bits"] = 8
    notes.append(f"{where} -> model.method {model['method']} {lora} ({origin})" + (f" (ignored {ignored})" if ignored else ""))
    if quantized and not torch.cuda.is_available():
        notes.append("load_in_4bit/load_in_8bit: quantized loading needs a CUDA GPU (bitsandbytes) and this machine has none: "
                     "LoRA on unquantized weights instead (the same adapter is trained)")


def _dtype(raw: dict, model: dict, notes: list[str]) -> None:
    dtype = raw.get("torch_dtype", "float16")  # the framework's default
    if dtype == "float16" and not torch.cuda.is_available():
        model["dtype"] = "float32"
        notes.append(f"torch_dtype float16{'' if 'torch_dtype' in raw else ' (the framework default)'} -> float32 weights "
                     "on this CPU (CPU float16 training is slow and unstable; bf16 autocast is used where the CPU has it)")
    else:
        model["dtype"] = dtype
        if "torch_dtype" not in raw:
            notes.append("torch_dtype (the framework default float16) -> model.dtype float16")


def peft_default_targets(base_model: str) -> list[str] | None:
    """peft's default LoRA targets for the model's architecture (what the framework gets with target_modules unset)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = None
    path = Path(base_model).expanduser()
    try:
        if (path / "config.json").is_file():
            model_type = json.loads((path / "config.json").read_text()).get("model_type")
        elif path.suffix == ".gguf" and path.is_file():
            from gguf import GGUFReader

            field = GGUFReader(str(path)).fields["general.architecture"]
            model_type = bytes(field.parts[field.data[0]]).decode()
    except (OSError, ValueError, KeyError):
        return None
    targets = MAPPING.get(model_type) if model_type else None
    return list(targets) if targets else None


def keys_present(raw: dict, keys: set[str]) -> bool:
    return bool(set(raw) & keys)
