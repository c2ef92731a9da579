"""`tunesmith eval`: loss and perplexity on the prepared eval split; on the held-out source rows,
generation metrics (exact match, ROUGE-L) and, for multiple-choice rows (`choices` + `gold`),
accuracy by ranking the choices on log-likelihood. Writes predictions.jsonl and prints a table.

`--data FILE` evaluates on the rows of a file instead (the loss on them as training renders
them); it is what eval needs without a config, the prompt settings then coming from the model."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from tunesmith.config.schema import Config, SourceConfig, builder_for
from tunesmith.data.collate import PadCollator
from tunesmith.data.prepare import load_prepared, raw_splits
from tunesmith.data.render import Renderer, make_renderer
from tunesmith.data.rows import ROW
from tunesmith.data.sources import load_source
from tunesmith.data.tokenize import encode_batch
from tunesmith.errors import ConfigError, DataError
from tunesmith.hf import IGNORE
from tunesmith.infer.generate import generate
from tunesmith.infer.load import load_for_inference
from tunesmith.infer.metrics import exact_match, rouge_l
from tunesmith.infer.preference_eval import answer_logps, preference_kind, preference_scores
from tunesmith.infer.settings import inference_config


def evaluate(cfg: Config | None, model_path: str | None = None, label: str | None = None, max_rows: int | None = None,
             max_new_tokens: int = 48, console: Console | None = None, batch_size: int = 16,
             data_file: str | None = None) -> dict:
    """`cfg` None: the prompt settings saved with `model_path`, and `data_file` is required."""
    if cfg is None and data_file is None:
        raise ConfigError("tunesmith eval without a config needs --data FILE: the rows to evaluate on",
                          "e.g. tunesmith eval --model outputs/NAME/final --data held_out.jsonl; "
                          "or give the training config to evaluate on its held-out rows")
    cfg = inference_config(cfg, model_path, "eval")
    console = console or Console(stderr=True)
    start = time.perf_counter()
    label = label or ("base" if model_path is None else Path(model_path).name)
    model, tokenizer = load_for_inference(cfg, model_path)
    renderer = make_renderer(cfg.data, tokenizer, where=cfg.user_key("data.preprocessing_fn"))
    result: dict = {"label": label, "model": model_path or cfg.base_model}

    predictions: list[dict] = []
    if data_file:
        rows = file_rows(data_file, max_rows)
        kind = preference_kind(rows, renderer)
        scored = None if kind else training_rows(renderer, rows, data_file)
    else:
        scored, rows = prepared_eval(cfg), held_out_rows(cfg, max_rows)
        kind = preference_kind(rows, renderer)
    if kind:  # preference rows: which answer the model prefers; nothing to generate
        metrics, predictions = preference_scores(model, renderer, rows, kind, batch_size)
        result.update(metrics)
        rows, scored = [], None
    elif scored is not None and "input_ids" not in getattr(scored, "column_names", ["input_ids"]):  # a prepared split
        raise DataError("the prepared eval split holds preference rows, which eval scores from their source rows",
                        "give the config's held-out source (data.eval or data.validation_split), or --data FILE")
    if scored is not None:
        loss, tokens = token_loss(model, scored, tokenizer.pad_token_id)
        result.update(eval_loss=round(loss, 4), perplexity=round(math.exp(min(loss, 50)), 3), eval_tokens=tokens)

    if rows:
        answers = generate(model, tokenizer, renderer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           show_progress=True)
        for i, (row, answer) in enumerate(zip(rows, answers)):
            reference = renderer.reference(row, row.get(ROW, i)) or ""
            predictions.append({"row": row.get(ROW, i), "reference": reference, "prediction": answer,
                                "exact_match": exact_match(answer, reference), "rouge_l": round(rouge_l(answer, reference), 4)})
        result["exact_match"] = round(sum(p["exact_match"] for p in predictions) / len(predictions), 4)
        result["rouge_l"] = round(sum(p["rouge_l"] for p in predictions) / len(predictions), 4)
        if all("choices" in r and "gold" in r for r in rows):
            correct = 0
            for row, pred in zip(rows, predictions):
                scores = choice_scores(model, tokenizer, renderer, row)
                pred["choice_logprobs"] = [round(s, 3) for s in scores]
                pred["predicted_choice"] = max(range(len(scores)), key=scores.__getitem__)
                pred["gold"] = row["gold"]
                correct += pred["predicted_choice"] == row["gold"]
            result["choice_accuracy"] = round(correct / len(rows), 4)
        result["rows"] = len(rows)
    result["seconds"] = round(time.perf_counter() - start, 1)

    out = Path(cfg.resolved_output_dir()) / "eval" / label
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print_results([result], console)
    return result


def prepared_eval(cfg: Config):
    if cfg.eval_data:
        return load_prepared(cfg.eval_data)["train"]
    data_dir = cfg.train_data or cfg.resolved_data_dir()
    if not Path(data_dir).exists():
        return None
    return load_prepared(data_dir).get("eval")


def held_out_rows(cfg: Config, max_rows: int | None) -> list[dict]:
    if cfg.data.train is None or (cfg.data.eval is None and not cfg.data.validation_split):
        return []
    ds = raw_splits(cfg)["eval"]
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return [dict(r) for r in ds]


def file_rows(path: str, max_rows: int | None) -> list[dict]:
    if builder_for(path) is None:
        raise ConfigError(f"--data {path}: cannot tell the file type from its name", "give a .jsonl, .json, .csv or .parquet file")
    if not Path(path).is_file():
        raise ConfigError(f"--data {path}: file not found", "relative paths start from the working directory")
    ds = load_source(SourceConfig(data_files=path), "--data")
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return [dict(r) for r in ds]


def training_rows(renderer: Renderer, rows: list[dict], source: str) -> list[dict]:
    """The rows as training renders them (answers trained, EOS added), for the loss; not cut to a length."""
    segments = []
    for i, row in enumerate(rows):
        if renderer.reference(row, i) is None:
            raise DataError(f"--data {source}: row {i} has no answer to compare with",
                            "eval scores each row's own answer (response, completion or the last assistant "
                            "message); use `tunesmith generate` for prompts without answers")
        segments += renderer.render(row, i, renderer.declared_format)[0]  # every example the row makes
    return [{"input_ids": ids, "labels": labels} for ids, labels in encode_batch(segments, renderer.tokenizer, renderer.specials)]


@torch.no_grad()
def token_loss(model, ds, pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Mean cross-entropy per trained token over a prepared split."""
    collate = PadCollator(pad_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(ds), batch_size):
        batch = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}  # packed rows carry position_ids
        logits = model(**inputs, use_cache=False).logits
        labels = batch["labels"][:, 1:].to(device)
        total += F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum").item()
        count += int((labels != IGNORE).sum())
    return (total / count if count else float("nan")), count


def choice_scores(model, tokenizer, renderer: Renderer, row: dict) -> list[float]:
    """Sum of log-probabilities of each choice as the answer (its end-of-turn included)."""
    example = renderer.example(row, 0, renderer.declared_format, prompt=True)
    segments = [renderer.segments({**example, "response": str(choice)}) for choice in row["choices"]]
    return answer_logps(model, renderer, encode_batch(segments, tokenizer, renderer.specials), batch_size=len(segments))[0]


COLUMNS = [("eval_loss", "eval loss", "{:.3f}"), ("perplexity", "perplexity", "{:.2f}"),
           ("preference_accuracy", "preference accuracy", "{:.1%}"), ("logp_margin", "log-prob margin", "{:+.3f}"),
           ("logp_margin_per_token", "margin per token", "{:+.4f}"),
           ("desirable_logp_per_token", "desirable log-p/token", "{:+.4f}"),
           ("undesirable_logp_per_token", "undesirable log-p/token", "{:+.4f}"),
           ("choice_accuracy", "choice accuracy", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"),
           ("rouge_l", "ROUGE-L", "{:.3f}")]


def print_results(results: list[dict], console: Console) -> None:
    table = Table(title="evaluation" + (f" on {results[0].get('rows')} held-out rows" if results[0].get("rows") else ""))
    table.add_column("model")
    shown = [c for c in COLUMNS if any(c[0] in r for r in results)]
    for _, title, _ in shown:
        table.add_column(title, justify="right")
    for r in results:
        table.add_row(r["label"], *[fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in shown])
    console.print(table)
