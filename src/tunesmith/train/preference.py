"""Training on preference rows: batches of both sides in one forward, the reference, the objective.

- A batch of B pairs is laid out as 2B sequences, every chosen side then every rejected side, in
  one padding-free row (attention per example) or in padded rows; one forward through the model
  gives each sequence's answer log-prob at answer positions only (train/sequence_logps.py).
  Unpaired (KTO) batches hold B rows, and B mismatched prompt/answer rows for the KL estimate as a
  batch of their own, scored without gradients (KTO's KL term takes none).
- The reference (train/reference.py): with an adapter, the same forward with the adapter off, no
  gradients; otherwise log-probs computed once before training and carried in the batch.
- The objective (train/objectives/) turns them into the loss (a mean over the batch's pairs, so
  the Trainer divides it by the accumulation steps and DDP averages it over processes: N
  processes x B pairs give the update of 1 process x N*B) and per-pair figures, which are
  averaged over every process at each log (metrics.jsonl: rewards/chosen, rewards/margins, ...).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from transformers import Trainer

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
            batch = self.sequences(sides)
        else:  # unpaired: the rows, and their mismatched KL rows as a batch of their own (scored without gradients)
            batch = self.sequences([(f["input_ids"], f["labels"]) for f in features])
            batch["kl"] = self.sequences([(f["kl_input_ids"], f["kl_labels"]) for f in features], count=False)
        for key in (*REFERENCE_COLUMNS, "label"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch

    def sequences(self, sides: list[tuple], count: bool = True) -> dict[str, torch.Tensor]:
        pad = PadCollator(pad_id=self.pad_id, padding_free=self.padding_free, segment_kwargs=self.segment_kwargs,
                          count_real_tokens=self.count_real_tokens and count)
        batch = pad([{"input_ids": ids, "labels": labels} for ids, labels in sides])
        batch["sequences"] = torch.tensor(len(sides))
        return batch


class PreferenceTrainer(TunesmithTrainer):
    def __init__(self, *args, objective, reference: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.reference = objective, reference  # reference: adapter_off, precomputed or none
        self.model_accepts_loss_kwargs = False  # a mean over pairs: the Trainer divides by accumulation steps
        self.loss_is_scaled_for_ga = False
        self.stored: dict[str, list] = defaultdict(list)
        self.figure_names: list[str] = []

    def sequence_logps(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-prob sums, token counts) of the batch's sequences, in collator order."""
        inputs = {k: v for k, v in batch.items() if k not in (*REFERENCE_COLUMNS, "label", "sequences", "kl")}
        count = int(batch["sequences"])
        if uses_trained_positions_loss(self.model):
            out = model(**inputs, use_cache=False, score_sequences=True)
            return out.logps[:count], out.tokens[:count]
        labels = inputs.pop("labels")
        logits = model(**inputs, use_cache=False).logits
        logps, tokens = logps_from_logits(logits, labels, inputs.get("position_ids"), IGNORE)
        return logps[:count], tokens[:count]

    def all_logps(self, model, batch: dict) -> torch.Tensor:
        """Every side's log-prob sum: pairs' chosen then rejected sides; unpaired rows then their
        KL rows (what the reference gives and the precomputed columns hold, in that order)."""
        logps = self.sequence_logps(model, batch)[0]
        return torch.cat([logps, self.sequence_logps(model, batch["kl"])[0]]) if "kl" in batch else logps

    def reference_logps(self, model, batch: dict) -> torch.Tensor | None:
        if self.reference == "adapter_off":
            unwrapped = self.accelerator.unwrap_model(model)
            with torch.no_grad(), unwrapped.disable_adapter():
                return self.all_logps(unwrapped, batch)
        if "ref_chosen_logps" in batch:
            other = batch["ref_rejected_logps"] if "ref_rejected_logps" in batch else batch["ref_kl_logps"]
            return torch.cat([batch["ref_chosen_logps"], other])
        return None

    def scores(self, model, batch: dict) -> Scores:
        logps, tokens = self.sequence_logps(model, batch)
        ref = self.reference_logps(model, batch)
        ref = None if ref is None else ref.to(logps)
        if "label" in batch:  # unpaired: the rows, and their mismatched KL rows (no gradient reaches KTO's KL term)
            n = logps.shape[0]
            with torch.no_grad():
                kl = self.sequence_logps(self.accelerator.unwrap_model(model), batch["kl"])[0]
            return Scores(logps, tokens, desirable=batch["label"], kl_logps=kl,
                          ref_chosen_logps=None if ref is None else ref[:n], ref_kl_logps=None if ref is None else ref[n:])
        n = logps.shape[0] // 2
        return Scores(logps[:n], tokens[:n], logps[n:], tokens[n:],
                      None if ref is None else ref[:n], None if ref is None else ref[n:])

    def pair_losses(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's loss of each pair (or row) of the batch, and its per-pair figures."""
        scores = self.scores(model, batch)
        if scores.kl_logps is None:
            return self.objective.loss(scores)
        # KTO: the KL estimate over every process's batch, as one batch of them all would give
        local = scores.kl_logps - scores.ref_kl_logps
        total, count = sum_over_processes([float(local.sum()), float(local.numel())], self.args.device)
        return self.objective.loss(scores, torch.tensor(max(total / max(count, 1.0), 0.0), device=local.device))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses, figures = self.pair_losses(model, inputs)
        loss = losses.mean()
        if model.training:
            self.store(figures)
        return (loss, {"loss": loss}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Per pair: its loss and figures, as "predictions": the Trainer gathers them from every
        process and drops the pairs that even batches repeat, so eval figures are means over the
        eval pairs however they are batched or spread over processes."""
        inputs.pop(REAL_TOKENS, None)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            losses, figures = self.pair_losses(model, inputs)
        self.figure_names = sorted(figures)
        table = torch.stack([losses.float(), *(figures[k].float() for k in self.figure_names)], dim=1)
        return losses.mean().detach(), table.detach(), None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = Trainer.evaluation_loop(self, dataloader, description, False, ignore_keys, metric_key_prefix)
        table = output.predictions
        if table is not None and len(table):
            table = np.asarray(table, dtype=np.float64)
            output.metrics[f"{metric_key_prefix}_loss"] = float(np.nanmean(table[:, 0]))
            for k, name in enumerate(self.figure_names, 1):
                if not np.isnan(table[:, k]).all():
                    output.metrics[f"{metric_key_prefix}_{name}"] = round(float(np.nanmean(table[:, k])), 6)
        return output._replace(predictions=None)

    def store(self, figures: dict[str, torch.Tensor]) -> None:
        """Training figures, summed until the next log (NaN: a figure that does not apply to a row)."""
        for name, values in figures.items():
            values = values.detach().float()
            known = ~torch.isnan(values)
            self.stored[name].append(values[known].sum())
            self.stored[name + "#n"].append(known.sum().float())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the training figures, averaged over every pair since the last log on every process."""
        if "loss" in logs:
            names = sorted(k for k in self.stored if not k.endswith("#n"))
            totals = sum_over_processes([float(sum(self.stored[k])) for k in names]
                                        + [float(sum(self.stored[k + "#n"])) for k in names], self.args.device) if names else []
            for i, name in enumerate(names):
                count = totals[len(names) + i]
                if count:
                    logs[name] = round(totals[i] / count, 6)
            self.stored.clear()
        super().log(logs, start_time)


def reference_source(objective, method_trains_adapter: bool, choice: str) -> str:
    """What gives the reference log-probs: 'adapter_off', 'precomputed', or 'none' (reference-free)."""
    if not objective.needs_reference:
        return "none"
    if choice == "auto":
        return "adapter_off" if method_trains_adapter else "precomputed"
    return choice
