"""`tunesmith check CONFIG`: a preflight in seconds, without training.

Validates the config, opens each source and renders + tokenizes a sample of its rows with prep's
own code (RowProcessor), checks the tokenizer, template and EOS against the model's config, and
estimates rows kept, tokens, steps, peak memory and time per epoch for this machine. Problems are
collected, not raised one at a time, so one run lists all of them.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import torch

from tunesmith.config.schema import Config
from tunesmith.errors import ConfigError, TunesmithError

SAMPLE_ROWS = 256


def check(cfg: Config, sample_rows: int = SAMPLE_ROWS) -> dict:
    """Returns the findings; raises ConfigError listing every problem when there is one."""
    start = time.perf_counter()
    problems: list[str] = []
    found: dict = {"splits": {}}

    def attempt(step, *args):
        try:
            return step(*args)
        except TunesmithError as e:
            problems.append(str(e))
            return None

    from tunesmith.config.training_keys import check_training_keys

    training_ok = attempt(lambda t: check_training_keys(t) or True, cfg.training)
    setup = attempt(_render_setup, cfg)
    model_config = attempt(_model_config, cfg)
    raw = attempt(_raw_splits, cfg) if setup else None
    for split, ds in (raw or {}).items():
        report = attempt(_sample_report, cfg, setup, split, ds, sample_rows)
        if report is not None:
            found["splits"][split] = report
            problems += report.pop("problems")
    if model_config is not None and setup is not None:
        problems += _model_problems(cfg, model_config, setup.tokenizer)
        if training_ok and "rows_kept_est" in found["splits"].get("train", {}):  # the estimate reads training values
            found["estimate"] = estimate(cfg, model_config, found["splits"]["train"])
    found["seconds"] = round(time.perf_counter() - start, 1)
    print_findings(found, problems)
    if problems:
        raise ConfigError(f"check found {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems),
                          "fix them, then `tunesmith check CONFIG` again")
    return found


def _render_setup(cfg: Config):
    from tunesmith.data.rows import render_setup

    return render_setup(cfg)


def _raw_splits(cfg: Config):
    from tunesmith.data.prepare import raw_splits

    return raw_splits(cfg)


def _model_config(cfg: Config):
    from transformers import AutoConfig

    from tunesmith.modelref import local_model
    from tunesmith.translate_errors import model_load_error

    try:
        return AutoConfig.from_pretrained(local_model(cfg.base_model), trust_remote_code=cfg.model.trust_remote_code)
    except Exception as e:
        raise model_load_error(e, cfg.base_model, cfg.base_model) from e


def _sample_report(cfg: Config, setup, split: str, ds, sample_rows: int) -> dict:
    """Prep's own row processing on an evenly spread sample; counts scaled to the whole split."""
    from datasets import disable_progress_bars, enable_progress_bars

    from tunesmith.data.report import split_report
    from tunesmith.data.rows import OUTPUT_FEATURES, ROW, RowProcessor, dataset_format
    from tunesmith.data.sources import describe_source

    d = cfg.data
    where = f"data.{split} ({describe_source(d.eval if split == 'eval' and d.eval else d.train)})"
    if len(ds) == 0:
        return {"rows": 0, "problems": [f"{where}: the source has no rows"]}
    kind = cfg.objective.data_kind  # preference rows: prep's pair processing
    try:
        row_format = "" if kind else dataset_format(d.format, ds.column_names, d.columns, setup.preprocess is not None)
    except TunesmithError as e:
        return {"rows": len(ds), "problems": [f"{where}: {e}"]}
    step = max(1, len(ds) // sample_rows)
    sample = ds.select(range(0, len(ds), step)[:sample_rows])
    lenient = d.model_copy(update={"bad_rows": "skip", "overlength": "drop" if d.overlength == "error" else d.overlength})
    if kind:
        from tunesmith.data.pair_rows import PairProcessor
        from tunesmith.data.pairs import PairRenderer

        processor = PairProcessor(PairRenderer(dataclasses.replace(setup, data=lenient)), kind)
        features = processor.features
    else:
        processor, features = RowProcessor(dataclasses.replace(setup, data=lenient), row_format), OUTPUT_FEATURES
    disable_progress_bars()
    try:
        out = sample.map(processor, batched=True, features=features, keep_in_memory=True, load_from_cache_file=False,
                         remove_columns=[c for c in sample.column_names if c != ROW])
    finally:
        enable_progress_bars()
    r = split_report(out)
    scale = len(ds) / len(sample)
    problems = []
    bad = r["dropped"].get("bad_row")
    if bad and d.bad_rows == "error":
        problems.append(f"{where}: {bad['count']} of {len(sample)} sampled rows are malformed, e.g. {bad['messages'][0].splitlines()[0]}"
                        " (prep stops at the first; data.bad_rows: skip drops and counts them)")
    long_rows = r["dropped"].get("too_long")
    if long_rows and d.overlength == "error":
        problems.append(f"{where}: {long_rows['count']} of {len(sample)} sampled rows are over data.max_length={d.max_length}, "
                        f"e.g. row {long_rows['rows'][0]} (data.overlength: drop or truncate)")
    if r["rows_kept"] == 0:
        problems.append(f"{where}: no sampled row is kept; drop reasons: { {k: v['count'] for k, v in r['dropped'].items()} }")
    return {"rows": len(ds), "sampled": len(sample), "rows_kept_est": round(r["rows_kept"] * scale),
            "tokens_est": round(r["tokens"] * scale), "trained_tokens_est": round(r["trained_tokens"] * scale),
            "dropped_in_sample": {k: v["count"] for k, v in r["dropped"].items()},
            "cut_in_sample": {k: v["count"] for k, v in r["cut"].items()}, "length_pct": r["length_pct"], "problems": problems}


def _model_problems(cfg: Config, model_config, tokenizer) -> list[str]:
    problems = []
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit and cfg.data.max_length > limit:
        problems.append(f"data.max_length {cfg.data.max_length} is over the model's max_position_embeddings {limit}")
    vocab = getattr(model_config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab}: "
                        "ids past the embedding would fail in training (use the model's own tokenizer)")
    if vocab and tokenizer.eos_token_id is not None and tokenizer.eos_token_id >= vocab:
        problems.append(f"EOS id {tokenizer.eos_token_id} is outside the model's vocabulary ({vocab})")
    return problems


def estimate(cfg: Config, model_config, train: dict) -> dict:
    """Rough figures (docs/faults.md compares one with a real run): parameters from the config,
    optimizer state by method, activations per batch, and matmul speed measured on this machine."""
    from tunesmith.config.training_keys import checkpointing_requested
    from tunesmith.train.arguments import default_bf16

    t = cfg.training
    batch = t.get("per_device_train_batch_size", 8) * t.get("gradient_accumulation_steps", 1)
    kept = max(train["rows_kept_est"], 1)
    if cfg.data.packing:
        rows = math.ceil(train["tokens_est"] / (cfg.data.max_length * 0.95))  # best-fit fills rows ~95%
    else:
        rows = kept
    steps = math.ceil(rows / batch)
    params = count_parameters(model_config)
    full = not cfg.model.trains_adapter
    weight_bytes = {"qlora": 0.55, "lora": 2 if torch.cuda.is_available() else 4}.get(cfg.model.method, 4)
    state = params * (weight_bytes + (12 if full else 0))  # fp32 grads + Adam's two moments for full fine-tuning
    hidden = getattr(model_config, "hidden_size", 0) or 0
    layers = getattr(model_config, "num_hidden_layers", 0) or 0
    mean_len = train["tokens_est"] / kept
    tokens_per_micro = t.get("per_device_train_batch_size", 8) * (cfg.data.max_length if cfg.data.packing else mean_len)
    per_token = hidden * layers * (2 if checkpointing_requested(t) else 34)  # bytes kept for backward (16-bit)
    activations = tokens_per_micro * per_token
    # 6 FLOPs per parameter and token; the embedding is a lookup, and the output projection runs
    # only at trained positions (tunesmith's loss), so it counts for trained tokens only.
    embedding = (getattr(model_config, "vocab_size", 0) or 0) * hidden
    flops = (6 * (params - embedding) * train["tokens_est"] + 6 * embedding * train["trained_tokens_est"]) * (1 if full else 2 / 3)
    bf16 = t.get("bf16", default_bf16())
    speed = matmul_flops_per_second(torch.bfloat16 if bf16 else torch.float32)
    return {"parameters": params, "steps_per_epoch": steps, "peak_memory_mb": round((state + activations) / 2**20),
            "seconds_per_epoch": round(flops / (0.5 * speed)), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "measured_matmul_gflops": round(speed / 1e9, 1), "dtype": "bf16" if bf16 else "fp32"}


def count_parameters(model_config) -> int:
    """Parameters of the architecture, built on the meta device (no memory, no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def matmul_flops_per_second(dtype: torch.dtype, size: int = 1024, seconds: float = 0.3) -> float:
    """What this machine's matmuls reach in the training dtype (training itself reaches ~half)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * n / (time.perf_counter() - start)


def print_findings(found: dict, problems: list[str]) -> None:
    out = sys.stderr
    for split, r in found["splits"].items():
        if "sampled" not in r:
            continue
        print(f"check: data.{split}: {r['rows']:,} rows, sampled {r['sampled']}: ~{r['rows_kept_est']:,} kept, "
              f"~{r['tokens_est']:,} tokens (~{r['trained_tokens_est']:,} trained); "
              f"dropped in sample {r['dropped_in_sample'] or 'none'}, cut {r['cut_in_sample'] or 'none'}; "
              f"length {r['length_pct']}", file=out)
    if e := found.get("estimate"):
        print(f"check: estimate for this machine ({e['device']}, {e['dtype']} matmuls {e['measured_matmul_gflops']} GFLOP/s measured): "
              f"{e['parameters']:,} parameters, {e['steps_per_epoch']:,} steps per epoch, "
              f"peak memory ~{e['peak_memory_mb']:,} MB, ~{e['seconds_per_epoch']:,} s per epoch", file=out)
    print(f"check: {'no problems' if not problems else f'{len(problems)} problem(s)'} ({found['seconds']} s)", file=out)
