"""The two-step workflow's YAML shapes (Saturn Cloud's dataprep.yaml / finetune.yaml) -> tunesmith's schema.

Those files name registered methods with `{method: ..., kwargs: {...}}`. We translate each key we
understand, refuse the ones we cannot honour, and return one note per translation so the
output can say what happened.
"""
from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError

DATAPREP_KEYS = {"source_config", "prompt_config", "prompt_format_config", "dataset_writer_config", "chunksize", "ignore_index"}
FINETUNE_KEYS = {"train_dataset_config", "eval_dataset_config", "training_arguments", "lora_config", "local_output",
                 "additional_output_paths", "torch_dtype", "load_in_4bit", "load_in_8bit", "use_gradient_checkpointing",
                 "resume_from_checkpoint", "experiment_tracking_config", "quantization_config"}
# The reference framework's own defaults, applied so its users get the run they expect.
SEED_TRAINING_DEFAULTS = dict(optim="adamw_torch", num_train_epochs=1, gradient_accumulation_steps=2,
                              per_device_train_batch_size=2, per_device_eval_batch_size=2, gradient_checkpointing=True,
                              logging_strategy="steps", logging_steps=10, save_steps=30, save_strategy="steps")
FORMATS = {"UserAssistantFormat": "user_assistant", "VicunaFormat": "vicuna", "Llama2Format": "llama2",
           "ChatMLFormat": "chatml", "DollyFormat": "dolly", "AlpacaFormat": "alpaca", "PlainFormat": "plain"}


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
    if "source_config" in raw:
        data["train"] = _source(raw["source_config"], "source_config", notes)
    if "prompt_config" in raw:
        method, kw = _method(raw["prompt_config"], "prompt_config")
        if method != "Prompt":
            raise ConfigError(f"prompt_config.method: {method!r} is not supported", "use Prompt (few-shot examples go in kwargs.examples)")
        data["prompt"] = kw
        notes.append("prompt_config (Prompt) -> data.prompt")
    if "prompt_format_config" in raw:
        method, kw = _method(raw["prompt_format_config"], "prompt_format_config")
        data["prompt_format"] = FORMATS.get(method, method) if not kw else {"name": method, **kw}
        notes.append(f"prompt_format_config ({method}) -> data.prompt_format {data['prompt_format']!r}")
    if "dataset_writer_config" in raw:
        method, kw = _method(raw["dataset_writer_config"], "dataset_writer_config")
        if method != "save_to_disk":
            raise ConfigError(f"dataset_writer_config.method: {method!r} is not supported", "use save_to_disk")
        data["output"] = kw.get("dataset_path")
        notes.append(f"dataset_writer_config -> data.output {data['output']!r}")
    if "chunksize" in raw:
        data["max_length"] = raw["chunksize"]
        notes.append(f"chunksize {raw['chunksize']} -> data.max_length (longer examples are dropped and counted, as before)")
    if raw.get("ignore_index", -100) != -100:
        raise ConfigError("ignore_index: tunesmith masks with -100 (what transformers' loss ignores); other values are not supported")


def _finetune(raw: dict, out: dict, data: dict, notes: list[str]) -> None:
    if not keys_present(raw, FINETUNE_KEYS):
        return
    model: dict[str, Any] = {}
    training = {**SEED_TRAINING_DEFAULTS, **(raw.get("training_arguments") or {})}
    if "evaluation_strategy" in training:  # renamed in transformers 4.46
        training["eval_strategy"] = training.pop("evaluation_strategy")
        notes.append("training_arguments.evaluation_strategy -> eval_strategy")
    if "use_gradient_checkpointing" in raw:
        training["gradient_checkpointing"] = raw["use_gradient_checkpointing"]
    training.pop("output_dir", None)
    out["training"] = training
    notes.append("training_arguments -> training (with the reference framework's defaults: batch 2, accumulation 2, "
                 "gradient checkpointing, save every 30 steps)")
    for key, target in (("train_dataset_config", "train_data"), ("eval_dataset_config", "eval_data")):
        if raw.get(key):
            method, kw = _method(raw[key], key)
            if method != "load_from_disk":
                raise ConfigError(f"{key}.method: training reads prepared data with load_from_disk, got {method!r}")
            out[target] = kw.get("dataset_path") or kw.get("path")
            notes.append(f"{key} -> {target} {out[target]!r}")
    if "local_output" in raw:
        out["output_dir"] = raw["local_output"]
        notes.append(f"local_output -> output_dir {raw['local_output']!r} (the model is written to final/, not final_output/)")
    if raw.get("lora_config") is not None or raw.get("load_in_4bit") or raw.get("load_in_8bit"):
        lc = dict(raw.get("lora_config") or {})
        lora = {k2: lc.pop(k1) for k1, k2 in (("r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                                              ("target_modules", "target_modules")) if k1 in lc}
        ignored = {k: lc.pop(k) for k in ("task_type", "bias") if k in lc}
        if lc:
            raise ConfigError(f"lora_config: {sorted(lc)} not supported", "tunesmith sets r, lora_alpha, lora_dropout, target_modules")
        model["lora"] = lora
        model["method"] = "qlora" if raw.get("load_in_4bit") or raw.get("load_in_8bit") else "lora"
        if raw.get("load_in_8bit"):
            model["quantization_bits"] = 8
        notes.append(f"lora_config/load_in_* -> model.method {model['method']}" + (f" (ignored {ignored})" if ignored else ""))
    if "torch_dtype" in raw:
        model["dtype"] = raw["torch_dtype"]
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


def keys_present(raw: dict, keys: set[str]) -> bool:
    return bool(set(raw) & keys)
