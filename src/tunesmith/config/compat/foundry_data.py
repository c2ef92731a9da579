"""llm-foundry's train_loader / eval_loader -> tunesmith's data section: the dataset (hf_name,
split, hf_kwargs), the preprocessing function or column mapping, max_seq_len, targets and packing.
Paths and the preprocessing module resolve against the working directory, as in foundry."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config.compat import foundry_rules as rules
from tunesmith.config.schema import builder_for
from tunesmith.errors import ConfigError


def data_sections(cfg: dict, cwd: Path, notes: list[str]) -> tuple[dict, dict]:
    """-> (tunesmith's data section, the train loader's own settings: shuffle, drop_last, num_workers)."""
    train, train_opts, loader = _loader(rules.section(cfg, "train_loader", required=True), "train_loader", cwd, notes)
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
        source["path"] = local_or_hub(str(hf_name), cwd)
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


def local_or_hub(value: str, cwd: Path) -> str:
    """A path under the working directory when it exists there, else the name as given (a Hub id)."""
    p = Path(value).expanduser()
    candidate = p if p.is_absolute() else cwd / p
    return str(candidate.resolve()) if candidate.exists() else value
