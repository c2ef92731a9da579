"""The Hugging Face Trainer, with what tunesmith's loss and reports need:

- the trained-token loss runs inside the model's forward (train/loss.py), already divided by the
  trained tokens of the whole accumulated, global batch, so the Trainer must not divide again;
- the options the Trainer applies to the loss are honoured by that loss or refused here: label
  smoothing is computed by the loss component (the Trainer's LabelSmoother would pop the labels
  and run the model's full-logits forward instead); a custom `compute_loss_func` is refused;
- no KV cache in the loss's forward (even with training.use_cache: true), so packed examples
  stay apart for every model;
- tokens are counted from the batches each process trains on and summed over processes at
  each log: trained tokens from the labels, real tokens from the count the collator puts in the
  batch (a tensor that travels with it, so dataloader worker processes count right; no counter
  lives in the collator, which may run in another process or be shared with evaluation);
- the eval loss is per trained token over the whole eval set, from per-row sums, so it is the
  same however the set is batched or split over processes.
"""
from __future__ import annotations

import torch
from transformers import Trainer

from tunesmith.errors import ConfigError
from tunesmith.hf import IGNORE
from tunesmith.train.collate import REAL_TOKENS
from tunesmith.train.distributed import sum_over_processes
from tunesmith.train.loss import uses_trained_positions_loss
from tunesmith.train.model import base_causal_lm


class TokenCounter:
    """Trained (loss-bearing) and real (non-pad) tokens this process has trained on."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.trained = self.real = 0

    def add(self, batch: dict) -> None:
        # Tensors, not ints: no device sync per micro-batch on a GPU.
        self.trained = self.trained + (batch["labels"][:, 1:] != IGNORE).sum()  # position 0 is never predicted
        self.real = self.real + batch.pop(REAL_TOKENS)

    def totals(self, device) -> tuple[int, int]:
        """(trained, real) summed over all processes; every process must call it at the same point."""
        trained, real = sum_over_processes([float(self.trained), float(self.real)], device)
        return int(trained), int(real)


class TunesmithTrainer(Trainer):
    def __init__(self, *args, eval_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.tokens = TokenCounter()
        if uses_trained_positions_loss(self.model):
            if self.compute_loss_func is not None:
                raise ConfigError("compute_loss_func replaces the loss, but the loss at trained positions runs inside "
                                  "the model's forward", "set model.loss: model to use a compute_loss_func")
            smoothing = base_causal_lm(self.model)._tunesmith_loss.label_smoothing
            if smoothing != self.args.label_smoothing_factor:
                raise ConfigError(f"training.label_smoothing_factor is {self.args.label_smoothing_factor}, but the loss "
                                  f"was built with label smoothing {smoothing}", "build the Trainer from the same config")
            self.label_smoother = None  # the loss component smooths; the LabelSmoother would bypass it
            # The forward takes num_items_in_batch and divides by it: scaled for accumulation already.
            self.model_accepts_loss_kwargs = True
            self.loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # No KV cache in a loss: with one, transformers ignores the position restarts of packed and
        # padding-free rows, and their examples see each other. The Trainer sets config.use_cache
        # from training.use_cache; this holds even when that is true. (The loss at trained positions
        # turns it off itself.)
        inputs = {**inputs, "use_cache": False}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.tokens.add(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def get_eval_dataloader(self, eval_dataset=None):
        # Eval rows stay rows (never concatenated padding-free), so per-row sums survive the
        # de-duplication of the rows that even batches repeat across processes.
        if self.eval_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(REAL_TOKENS, None)
        if not uses_trained_positions_loss(self.model):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            out = model(**inputs)
        return out.loss.detach(), out.row_losses.detach(), None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        if not uses_trained_positions_loss(self.model):
            return super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # Not loss-only: the per-row sums come back as "predictions", gathered from all processes.
        output = super().evaluation_loop(dataloader, description, False, ignore_keys, metric_key_prefix)
        rows = output.predictions
        if rows is not None and len(rows):
            output.metrics[f"{metric_key_prefix}_loss"] = float(rows[:, 0].sum() / max(rows[:, 1].sum(), 1.0))
        return output._replace(predictions=None)
