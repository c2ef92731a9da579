"""Held-out preference rows: does the model prefer the chosen answer?

Each pair is rendered as training renders it (data/pairs.py: both sides through the one render
path, scored at the answer only, the length policy applied to the pair as prep applies it), and
the model's summed answer log-probs of the two sides are compared: preference accuracy is the
share of pairs whose chosen answer is the likelier, the margin the mean difference (per answer,
and per answer token). Unpaired (KTO) rows give the mean answer log-prob per token of the
desirable and of the undesirable answers. Run it on the base and on the trained model
(`tunesmith eval CONFIG`, then with `--model`) to see what preference tuning did.
"""
from __future__ import annotations

import torch

from tunesmith.data.collate import PadCollator
from tunesmith.data.pairs import PairRenderer, fit_row
from tunesmith.data.render import Renderer
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE


def preference_kind(rows: list[dict], renderer: Renderer) -> str:
    """'pairs', 'unpaired' or '' for rows (after the preprocessing function and data.columns)."""
    if not rows:
        return ""
    row = PairRenderer(renderer).row(rows[0], 0)
    if "chosen" in row and "rejected" in row:
        return "pairs"
    return "unpaired" if {"prompt", "completion", "label"} <= set(row) else ""


def rendered(renderer: Renderer, rows: list[dict], kind: str) -> tuple[list[list[tuple[list[int], list[int]]]], list, dict]:
    """Each row's sides as training renders and cuts them -> (sides per kept row, kept rows'
    labels (unpaired) or indices, how many rows were skipped by reason)."""
    pairs, d = PairRenderer(renderer), renderer.data
    kept, keys, skipped = [], [], {}
    for i, row in enumerate(rows):
        index = row.get("_row", i)
        try:
            fitted = fit_row(pairs, row, index, kind)
            drop = fitted.drop
            sides = [(e.input_ids, e.labels) for e in fitted.sides]
            key = index if kind == "pairs" else fitted.label
        except DataError as e:
            if d.bad_rows == "error":
                raise DataError(f"eval rows: {e.message}", e.hint) from None
            drop = "bad_row"
        if drop:
            skipped[drop] = skipped.get(drop, 0) + 1
            continue
        kept.append(sides)
        keys.append(key)
    return kept, keys, skipped


@torch.no_grad()
def answer_logps(model, renderer: Renderer, sequences: list[tuple[list[int], list[int]]], batch_size: int = 8) -> tuple[list[float], list[int]]:
    """Summed answer log-probs and answer token counts of each sequence (log-softmax a row at a
    time, so a batch's full-vocabulary fp32 log-probs never exist at once)."""
    collate = PadCollator(renderer.tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logps, tokens = [], []
    for start in range(0, len(sequences), batch_size):
        batch = collate([{"input_ids": ids, "labels": labels} for ids, labels in sequences[start:start + batch_size]])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       use_cache=False).logits
        labels = batch["labels"][:, 1:].to(device)
        for row in range(labels.shape[0]):
            keep = labels[row] != IGNORE
            picked = torch.log_softmax(logits[row, :-1][keep].float(), dim=-1).gather(-1, labels[row][keep][:, None])
            logps.append(float(picked.sum()))
            tokens.append(int(keep.sum()))
    return logps, tokens


def preference_scores(model, renderer: Renderer, rows: list[dict], kind: str, batch_size: int = 8) -> tuple[dict, list[dict]]:
    """(metrics, one record per kept row) for pair or unpaired rows."""
    kept, keys, skipped = rendered(renderer, rows, kind)
    if not kept:
        raise DataError(f"eval rows: none of the {len(rows)} {kind} rows is left to score (skipped: {skipped})",
                        "see the reasons; raise data.max_length or fix the rows")
    logps, tokens = answer_logps(model, renderer, [s for sides in kept for s in sides], batch_size)
    if kind == "pairs":
        records = [{"row": keys[k], "chosen_logp": round(logps[2 * k], 4), "rejected_logp": round(logps[2 * k + 1], 4),
                    "chosen_tokens": tokens[2 * k], "rejected_tokens": tokens[2 * k + 1]} for k in range(len(kept))]
        metrics = pair_metrics(records)
    else:
        records = [{"desirable": keys[k], "logp": round(logps[k], 4), "tokens": tokens[k]} for k in range(len(kept))]
        metrics = unpaired_metrics(records)
    if skipped:
        metrics["rows_skipped"] = skipped
    return metrics, records


def pair_metrics(scores: list[dict]) -> dict:
    n = max(len(scores), 1)
    margins = [s["chosen_logp"] - s["rejected_logp"] for s in scores]
    per_token = [s["chosen_logp"] / max(s["chosen_tokens"], 1) - s["rejected_logp"] / max(s["rejected_tokens"], 1)
                 for s in scores]
    return {"pairs": len(scores),
            "preference_accuracy": round(sum(m > 0 for m in margins) / n, 4),
            "logp_margin": round(sum(margins) / n, 4),
            "logp_margin_per_token": round(sum(per_token) / n, 4),
            "chosen_logp": round(sum(s["chosen_logp"] for s in scores) / n, 4),
            "rejected_logp": round(sum(s["rejected_logp"] for s in scores) / n, 4)}


def unpaired_metrics(records: list[dict]) -> dict:
    def mean_per_token(desirable: bool) -> float | None:
        found = [r["logp"] / max(r["tokens"], 1) for r in records if r["desirable"] == desirable]
        return round(sum(found) / len(found), 4) if found else None

    good, bad = mean_per_token(True), mean_per_token(False)
    out = {"rows_scored": len(records), "desirable_logp_per_token": good, "undesirable_logp_per_token": bad}
    if good is not None and bad is not None:
        out["logp_margin_per_token"] = round(good - bad, 4)
    return out
