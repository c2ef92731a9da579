"""Training on preference rows: batches of both sides in one forward, the reference, the objective.

- A batch of B pairs is laid out as 2B sequences, every chosen side then every rejected side, in
  one padding-free row (attention per example) or in padded rows; one forward through the model
  gives each sequence's answer log-prob at answer positions only (train/sequence_logps.py).
  Unpaired (KTO) batches hold B rows and then B mismatched prompt/answer rows for the KL estimate.
- The reference (train/reference.py): with an adapter, the same forward with the adapter off, no
  gradients; otherwise log-probs computed once before training and carried in the batch.
- The objective (train/objectives/) turns them into the loss (a mean over the batch's pairs, so
  the Trainer divides it by the accumulation steps and DDP averages it over processes: N
  processes x B pairs give the update of 1 process x N*B) and per-pair figures, which are
  averaged over every process at each log (metrics.jsonl: rewards/chosen, rewards/margins, ...).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch

from tunesmith.hf import IGNORE
from tunesmith.train.collate import REAL_TOKENS, PadCollator
from tunesmith.train.distributed import sum_over_processes
from tunesmith.train.loss import uses_trained_positions_loss
from tunesmith.train.objectives import Scores
from tunesmith.train.sequence_logps import logps_from_logits
from tunesmith.train.trainer import TunesmithTrainer

REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "ref_kl_logps")
PAIR_COLUMNS = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", *REFERENCE_COLUMNS]
UNPAIRED_COLUMNS = ["input_ids", "labels", "label", "kl_input_ids", "kl_labels", *REFERENCE_COLUMNS]


@dataclass
class PreferenceCollator:
    """Pair rows (or unpaired rows) -> one batch of all their sequences, plus what the objective reads."""

    pad_id: int
    padding_free: bool = True
    segment_kwargs: bool = False
    count_real_tokens: bool = True

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if "chosen_input_ids" in features[0]:
            sides = [(f["chosen_input_ids"], f["chosen_labels"]) for f in features] + \
                    [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        else:
            sides = [(f["input_ids"], f["labels"]) for f in features] + [(f["kl_input_ids"], f["kl_labels"]) for f in features]
        pad = PadCollator(pad_id=self.pad_id, padding_free=self.padding_free, segment_kwargs=self.segment_kwargs,
                          count_real_tokens=self.count_real_tokens)
        batch = pad([{"input_ids": ids, "labels": labels} for ids, labels in sides])
        batch["sequences"] = torch.tensor(len(sides))
        for key in (*REFERENCE_COLUMNS, "label"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch


class PreferenceTrainer(TunesmithTrainer):
    def __init__(self, *args, objective, reference: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.reference = objective, reference  # reference: adapter_off, precomputed or none
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation steps
        self.loss_is_scaled_for_ga = False
        self.stored: dict[str, dict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def sequence_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob sums, token counts) of the batch's sequences, in collator order."""
        inputs = {k: v for k, v in batch.items() if k not in (*REFERENCE_COLUMNS, "label", "sequences")}
        count = int(batch["sequences"])
        if uses_trained_positions_loss(self.model):
            out = model(**inputs, use_cache=False, score_sequences=True)
            return out.logps[:count], out.tokens[:count]
        labels = inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits
        logps, tokens = logps_from_logits(logits, labels, inputs.get("position_ids"), IGNORE)
        return logps[:count], tokens[:count]

    def reference_logps(self, model, batch: dict) -> torch.Tensor | None:
        if self.reference != "adapter_off":
            return None
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), unwrapped.disable_adapter():
            return self.sequence_logps(unwrapped, batch)[0]

    def scores(self, model, batch: dict) -> Scores:
        logps, tokens = self.sequence_logps(model, batch)
        ref = self.reference_logps(model, batch)
        n = logps.shape[0] // 2
        if ref is None and "ref_chosen_logps" in batch:
            other = batch["ref_rejected_logps"] if "ref_rejected_logps" in batch else batch["ref_kl_logps"]
            ref = torch.cat([batch["ref_chosen_logps"], other]).to(logps)
        if "label" in batch:  # unpaired: rows, then their mismatched KL rows
            return Scores(logps[:n], tokens[:n], desirable=batch["label"], kl_logps=logps[n:].detach(),
                          ref_chosen_logps=None if ref is None else ref[:n],
                          ref_kl_logps=None if ref is None else ref[n:])
        return Scores(logps[:n], tokens[:n], logps[n:], tokens[n:],
                      None if ref is None else ref[:n], None if ref is None else ref[n:])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scores = self.scores(model, inputs)
        if scores.kl_logps is not None:  # KTO: the KL estimate over every process's batch, as one batch would give
            local = scores.kl_logps - scores.ref_kl_logps
            total, count = sum_over_processes([float(local.sum()), float(local.numel())], self.args.device)
            loss, figures = self.objective.loss(scores, torch.tensor(max(total / count, 0.0), device=local.device))
        else:
            loss, figures = self.objective.loss(scores)
        self.store(figures, "train" if model.training else "eval")
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(REAL_TOKENS, None)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        return super(TunesmithTrainer, self).evaluation_loop(*args, **kwargs)

    def store(self, figures: dict[str, torch.Tensor], split: str) -> None:
        for name, values in figures.items():
            self.stored[split][name].append(values.detach().float().sum())
            self.stored[split][name + "#n"].append(torch.tensor(float(values.numel())))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the stored figures, averaged over every pair since the last log on every process."""
        split = "train" if "loss" in logs else ("eval" if "eval_loss" in logs else None)
        if split is not None:
            stored = self.stored[split]
            names = sorted(k for k in stored if not k.endswith("#n"))
            totals = sum_over_processes([float(sum(stored[k])) for k in names] + [float(sum(stored[k + "#n"])) for k in names],
                                        self.args.device) if names else []
            prefix = "eval_" if split == "eval" else ""
            for i, name in enumerate(names):
                count = totals[len(names) + i]
                if count:
                    logs[prefix + name] = round(totals[i] / count, 6)
            stored.clear()
        super().log(logs, start_time)


def reference_source(objective, method_trains_adapter: bool, choice: str) -> str:
    """What gives the reference log-probs: 'adapter_off', 'precomputed', or 'none' (reference-free)."""
    if not objective.needs_reference:
        return "none"
    if choice == "auto":
        return "adapter_off" if method_trains_adapter else "precomputed"
    return choice


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode, no gradients; restored afterwards."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)
