"""The data preparation recipe, top to bottom:

    config -> tokenizer -> sources -> (validation split) -> render + tokenize -> report -> filter -> write
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, disable_progress_bars, enable_progress_bars
from transformers import PreTrainedTokenizerBase

from tunesmith import __version__
from tunesmith.config.schema import Config
from tunesmith.config.secrets import mask
from tunesmith.data.pair_rows import PairProcessor
from tunesmith.data.pairs import PairRenderer, check_pair_config, pair_kind, with_mismatched_rows
from tunesmith.data.pack import pack_split, packing_report
from tunesmith.data.report import print_summary, split_report
from tunesmith.data.rows import (OUTPUT_FEATURES, ROW, STATUS_COLUMNS, RowProcessor, dataset_format, render_setup,
                                 renamed_columns)
from tunesmith.data.sources import describe_source, load_source
from tunesmith.data.identity import tokenizer_identity
from tunesmith.data.write import read_prepared_file, write_prepared
from tunesmith.errors import ConfigError, DataError, OutputError
from tunesmith.translate_errors import write_oserror

AUTO_PROC_MIN_ROWS = 20_000  # below this, starting worker processes costs more than it saves


def prepare(cfg: Config, quiet: bool = False, tokenizer: PreTrainedTokenizerBase | None = None) -> dict:
    """Prepare the data described by `cfg.data`; returns the report (also written beside the data).
    `tokenizer`: one already loaded for this config (default: load it from the config)."""
    start = time.perf_counter()
    d = cfg.data
    renderer = render_setup(cfg, tokenizer)
    tokenizer, fmt = renderer.tokenizer, renderer.fmt

    kind = cfg.objective.data_kind  # '' for SFT rows; 'pairs' or 'unpaired' for preference objectives
    if kind:
        check_pair_config(d, kind)
    raw = raw_splits(cfg)

    processed, reports, chat_lines = {}, {}, []
    for split, ds in raw.items():
        if len(ds) == 0:
            raise DataError(f"data.{split}: the source has no rows")
        num_proc = d.num_proc or auto_processes(len(ds))
        num_proc = num_proc if num_proc > 1 else None  # num_proc=1 would still start a worker process
        if quiet:
            disable_progress_bars()
        try:
            columns = renamed_columns(ds.column_names, d.columns)
            if not kind and renderer.preprocess is None and pair_kind(columns) == "pairs":
                raise ConfigError(f"data.{split}: the rows are preference pairs (chosen, rejected), but the objective is sft",
                                  "set objective: dpo (or ipo, simpo, orpo) to train on them; docs/preference.md")
            if kind:
                processor = PairProcessor(PairRenderer(renderer), kind)
                out = ds.map(processor, batched=True, batch_size=1000, num_proc=num_proc, features=processor.features,
                             remove_columns=[c for c in ds.column_names if c != ROW], load_from_cache_file=False,
                             desc=f"tokenizing {split} ({kind})")
                reports[split] = split_report(out)
                processed[split] = kept_rows(out, reports[split])
                if kind == "unpaired" and len(processed[split]):
                    processed[split] = with_mismatched_rows(processed[split], d.max_length)
                continue
            row_format = dataset_format(d.format, ds.column_names, d.columns, renderer.preprocess is not None)
            if row_format == "chat" and split == "train":
                chat_lines = renderer.chat_choices(renamed_columns(ds.column_names, d.columns))
                if not quiet:
                    print("\n".join(f"prep: {line}" for line in chat_lines))
            processor = RowProcessor(renderer, row_format)
            out = ds.map(processor, batched=True, batch_size=1000, num_proc=num_proc, features=OUTPUT_FEATURES,
                         remove_columns=[c for c in ds.column_names if c != ROW], load_from_cache_file=False,
                         desc=f"tokenizing {split}")
        except DataError as e:  # name the source the row comes from
            source = d.eval if split == "eval" and d.eval is not None else d.train
            raise DataError(f"data.{split} ({describe_source(source)}): {e.message}", e.hint) from e
        finally:
            enable_progress_bars()
        reports[split] = split_report(out)
        processed[split] = kept_rows(out, reports[split])
        if d.packing and len(processed[split]):
            packed = pack_split(processed[split], d.max_length)
            reports[split]["packing"] = packing_report(processed[split], packed, d.max_length)
            processed[split] = packed

    if reports["train"]["rows_kept"] == 0:
        raise DataError("no training row is left after the length policy and checks",
                        f"see the drop reasons: {reports['train']['dropped']}")
    seconds = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in reports.values())
    out_dir = cfg.resolved_data_dir()
    report = {
        "output": out_dir, "splits": reports, "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1) if seconds else 0.0,
        "prompt_format": fmt if isinstance(fmt, str) else fmt.name, "max_length": d.max_length,
        "overlength": d.overlength, "translated_from_seed": cfg.seed_compat,
    }
    if kind:
        report["rows_kind"] = kind  # a pair is one row: kept, dropped and cut together
    if chat_lines:
        report["chat"] = chat_lines
    meta = {"tunesmith_version": __version__, "tokenizer": tokenizer_identity(tokenizer),
            "prompt_format": report["prompt_format"], "max_length": d.max_length, "rows_kind": kind or "sft",
            "data_config": mask(d.model_dump(mode="json"))[0]}  # no storage_options credentials on disk
    try:
        write_prepared(DatasetDict(processed), out_dir, report, meta, d.export, d.output_layout, d.writer)
    except Exception as e:  # disk full, permissions: write_prepared removed its partial copy
        if (oserror := write_oserror(e)) is None:
            raise
        raise OutputError(f"could not write the prepared data to {out_dir}: {os.strerror(oserror.errno)}; "
                          "the partial copy was removed and any previous data there is intact",
                          "free space or fix permissions there, or set data.output elsewhere; then prep again") from e
    if not quiet:
        print_summary(report)
    return report


def kept_rows(out: Dataset, report: dict) -> Dataset:
    """The rows whose status is ok, without the status columns."""
    if report["rows_kept"] < len(out):  # a filter adds an indices mapping that saving must rewrite
        out = out.filter(lambda s: [x == "ok" for x in s], input_columns="_status", batched=True,
                         batch_size=10_000, load_from_cache_file=False)
    return out.remove_columns(STATUS_COLUMNS)


def auto_processes(rows: int) -> int:
    """Worker processes for `data.num_proc: null`. The Rust tokenizer already spreads each batch
    over threads, so each process is left two cores (on 2 cores one process was measured ~0.5 s
    faster per 100k rows than two); small inputs get one, as starting workers costs more."""
    return max(1, (os.cpu_count() or 1) // 2) if rows >= AUTO_PROC_MIN_ROWS else 1


def raw_splits(cfg: Config) -> dict[str, Dataset]:
    """The source rows of each split (with their row index), before any rendering."""
    d = cfg.data
    if d.train is None:
        raise ConfigError(f"{cfg.user_key('data.train')}: required key is missing",
                          "say where the training rows come from, e.g. {data_files: train.jsonl}")
    raw = {"train": with_row_index(load_source(d.train, "data.train"))}
    if d.eval is not None:
        raw["eval"] = with_row_index(load_source(d.eval, "data.eval"))
    elif d.validation_split:
        rows, held = len(raw["train"]), math.ceil(d.validation_split * len(raw["train"]))  # as train_test_split rounds
        if rows - held < 1:
            raise DataError(f"data.validation_split {d.validation_split} of {rows} row(s) leaves no training row",
                            "give more rows, a smaller validation_split, or a separate data.eval source")
        parts = raw["train"].train_test_split(test_size=d.validation_split, seed=d.seed, shuffle=True)
        raw = {"train": parts["train"], "eval": parts["test"]}
    return raw


def with_row_index(ds: Dataset) -> Dataset:
    if ROW in ds.column_names:
        raise DataError(f"the source already has a column named {ROW!r}, which tunesmith reserves", "rename that column")
    return ds.add_column(ROW, np.arange(len(ds), dtype=np.int64))


def load_prepared(data_dir: str) -> DatasetDict:
    """Read what prepare() wrote (a DatasetDict, or a plain Dataset saved by another tool)."""
    from datasets import load_from_disk

    if "://" not in data_dir and not Path(data_dir).exists():
        raise DataError(f"{data_dir}: prepared data not found", "run `tunesmith prep CONFIG` first, or point data.output at it")
    if Path(data_dir).is_file():  # one file written by to_json / to_parquet
        return DatasetDict({"train": read_prepared_file(data_dir)})
    loaded = load_from_disk(data_dir)
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
