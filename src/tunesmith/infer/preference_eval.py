"""Held-out preference pairs: does the model prefer the chosen answer?

Each pair is rendered as training renders it (data/pairs.py: both sides through the one render
path, scored at the answer only), and the model's summed answer log-probs of the two sides are
compared: preference accuracy is the share of pairs whose chosen answer is the likelier, the
margin the mean difference (per answer, and per answer token). Run it on the base and on the
trained model (`tunesmith eval CONFIG`, then with `--model`) to see what preference tuning did.
"""
from __future__ import annotations

import torch

from tunesmith.data.collate import PadCollator
from tunesmith.data.pairs import PairRenderer
from tunesmith.data.render import Renderer
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE


def is_pair_rows(rows: list[dict], renderer: Renderer) -> bool:
    """Whether the rows (after the preprocessing function and data.columns) are preference pairs."""
    if not rows:
        return False
    pairs = PairRenderer(renderer)
    row = pairs.row(rows[0], 0)
    return "chosen" in row and "rejected" in row


@torch.no_grad()
def pair_scores(model, renderer: Renderer, rows: list[dict], batch_size: int = 8) -> list[dict]:
    """Per pair: summed answer log-probs and answer tokens of each side."""
    pairs = PairRenderer(renderer)
    sides = []
    for i, row in enumerate(rows):
        try:
            chosen, rejected = pairs.pair(row, row.get("_row", i))
        except DataError as e:
            raise DataError(f"eval pairs: {e.message}", e.hint) from None
        sides += [chosen, rejected]
    collate = PadCollator(renderer.tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logps, tokens = [], []
    for start in range(0, len(sides), 2 * batch_size):
        batch = collate([{"input_ids": s.ids, "labels": s.labels} for s in sides[start:start + 2 * batch_size]])
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                       use_cache=False).logits.float()
        labels = batch["labels"][:, 1:].to(device)
        keep = labels != IGNORE
        picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        logps += (picked * keep).sum(-1).tolist()
        tokens += keep.sum(-1).tolist()
    return [{"chosen_logp": round(logps[2 * k], 4), "rejected_logp": round(logps[2 * k + 1], 4),
             "chosen_tokens": tokens[2 * k], "rejected_tokens": tokens[2 * k + 1]} for k in range(len(rows))]


def preference_metrics(scores: list[dict]) -> dict:
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
