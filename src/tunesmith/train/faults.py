"""Faults during training end in a state that continues, and in one message that says what to do.

- SIGTERM / SIGINT (preemption, Slurm, Ctrl-C): the current step finishes, the Trainer saves a
  checkpoint through its own save path, and the run stops; `model.resume: auto` continues from
  it with the same result as an uninterrupted run. A second signal stops at once.
- A non-finite loss or gradient: the step's update is never applied (its gradients are
  dropped before the optimizer runs); by default the run stops naming the step and the last good
  checkpoint, with `model.nonfinite: skip` the step is skipped, counted and reported.
- Out of memory, and a full disk or a failed write while saving: one message naming the knobs
  or the folder, and partial checkpoint/final folders are removed (complete ones stay).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback

from tunesmith.config.training_keys import checkpointing_requested
from tunesmith.errors import ConfigError, ModelError, OutputError, TunesmithError
from tunesmith.train.checkpoints import MARKER, latest_complete_checkpoint
from tunesmith.train.distributed import sum_over_processes
from tunesmith.translate_errors import write_oserror


class RunInterrupted(TunesmithError):
    """Stopped by a signal after saving a checkpoint; exits 128 + the signal number, as a shell would."""

    def __init__(self, message: str, hint: str, signum: int):
        super().__init__(message, hint)
        self.exit_code = 128 + signum


class NonFiniteLoss(ModelError):
    """The loss or the gradients became NaN or infinite."""


class FaultGuard(TrainerCallback):
    """Plugged into the Trainer by train/run.py: signals, non-finite steps, secrets out of checkpoints."""

    def __init__(self, skip_nonfinite: bool = False):
        self.skip_nonfinite = skip_nonfinite
        self.signum: int | None = None
        self.skipped_steps: list[int] = []
        self._previous: dict[int, object] = {}

    # -- signals ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if args.hub_token:  # the Trainer pickles its arguments into every checkpoint (training_args.bin)
            os.environ["HF_TOKEN"] = args.hub_token  # huggingface_hub reads it from here instead
            args.hub_token = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep the defaults
                pass

    def _on_signal(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now
            self.restore_signals()
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\ntunesmith: {signal.Signals(signum).name} received; saving a checkpoint after this step "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.signum is not None):  # every process stops at the same step
            self.signum = self.signum or signal.SIGTERM
            control.should_save = True
            control.should_evaluate = False  # an eval could veto the save (save_strategy: best)
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.signum is not None:
            self.restore_signals()
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            raise RunInterrupted(f"stopped by {signal.Signals(self.signum).name} at step {state.global_step}; "
                                 f"checkpoint saved in {ckpt}",
                                 "continue with `tunesmith train CONFIG model.resume=auto`", self.signum)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_signals()
        if self.skipped_steps:
            print(f"tunesmith: skipped {len(self.skipped_steps)} step(s) with a non-finite loss or gradient: "
                  f"{self.skipped_steps[:20]}", file=sys.stderr)

    def restore_signals(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    # -- non-finite loss / gradients ------------------------------------------------------------
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if args.fp16:  # fp16's loss scaler expects overflows: it skips those steps and lowers the scale itself
            return
        if _any_rank(not local_grads_finite(model)):
            step = state.global_step + 1
            model.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
            if not self.skip_nonfinite:
                last = latest_complete_checkpoint(Path(args.output_dir))
                raise NonFiniteLoss(f"step {step}: the loss or the gradients are not finite (NaN or inf); "
                                    f"last good checkpoint: {last or 'none yet'}",
                                    "lower training.learning_rate, keep training.max_grad_norm, use bf16 rather than "
                                    "fp16, check the data for extreme rows; or set model.nonfinite: skip")
            self.skipped_steps.append(step)


def local_grads_finite(model) -> bool:
    """Whether this process's gradients are all finite. Sharded gradients (FSDP2's DTensors) are
    read as this process's own shard, with no collective per parameter; the caller combines the
    processes' answers (_any_rank). ZeRO keeps gradients in its optimizer, not in .grad: there
    nothing is read here (DeepSpeed's own overflow check covers fp16 only)."""
    grads = [g.to_local() if hasattr(g, "to_local") else g for p in model.parameters() if (g := p.grad) is not None]
    grads = [g for g in grads if g.numel()]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)  # one pass over the gradients, like clipping
    return bool(torch.isfinite(torch.stack([n.to(norms[0].device, torch.float32) for n in norms])).all())


def _any_rank(flag: bool) -> bool:
    """True when `flag` is true on any process (one process's signal or NaN stops them all)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return sum_over_processes([float(flag)], device)[0] > 0


# -- errors raised out of trainer.train or a save -----------------------------------------------
def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


@contextmanager
def translated_faults(cfg, args, out: Path, guard: FaultGuard | None = None):
    """Out of memory and failed writes inside the block -> one message each, exit 2. However the
    block ends, `guard`'s signal handlers are taken down (a notebook's Ctrl-C works again)."""
    try:
        yield
    except TunesmithError:
        raise
    except Exception as e:
        if is_out_of_memory(e):
            raise out_of_memory_error(e, cfg, args) from e
        if (oserror := write_oserror(e)) is not None:
            raise write_error(oserror, out) from e
        if (refused := settings_refused(e, cfg)) is not None:
            raise refused from e
        raise
    finally:
        if guard is not None:
            guard.restore_signals()


# Where the Trainer turns `training:` values into an optimizer and a schedule, before the first step.
SETUP_FUNCTIONS = {"create_optimizer", "create_scheduler", "create_optimizer_and_scheduler", "get_optimizer_cls_and_kwargs",
                   "get_scheduler", "_prepare_for_training"}
# Where the Trainer builds its data loaders from the `dataloader_*` values (a start method with no
# worker processes, a prefetch factor without workers): the values' fault too.
LOADER_FUNCTIONS = {"get_train_dataloader", "get_eval_dataloader", "_get_dataloader"}


def settings_refused(e: BaseException, cfg) -> ConfigError | None:
    """A ValueError or TypeError raised while the Trainer builds its optimizer, schedule or data
    loaders from the `training:` values (`optim_args` it cannot parse, an optimizer's own range
    checks, DataLoader options that contradict each other): the values' fault, named as such. None
    for anything else."""
    if not isinstance(e, (ValueError, TypeError)):
        return None
    where = {f.name for f in traceback.extract_tb(e.__traceback__)}
    if where & SETUP_FUNCTIONS:
        stage = "the optimizer and schedule"
    elif where & LOADER_FUNCTIONS:
        stage = "the data loaders"
    else:
        return None
    keys = ", ".join(f"training.{k}" for k in cfg.training) or "none"
    return ConfigError(f"the Trainer refused the training settings while building {stage}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                       f"check the values of the training keys you set ({keys})")


def out_of_memory_error(e: BaseException, cfg, args) -> ModelError:
    """The knobs that lower memory for this run, with their current values."""
    t = cfg.training
    knobs = [f"training.per_device_train_batch_size: {args.per_device_train_batch_size} (lower it; raise "
             f"training.gradient_accumulation_steps, now {args.gradient_accumulation_steps}, to keep the batch)",
             f"data.max_length: {cfg.data.max_length} (shorter rows; then prep again)"]
    if not checkpointing_requested(t):
        knobs.append("training.activation_checkpointing: true (recompute activations)")
    if not cfg.model.trains_adapter:
        knobs.append("model.method: lora (or qlora): no optimizer state for the base weights")
    if cfg.data.packing:
        knobs.append("data.packing: false (rows of max_length tokens each)")
    where = "GPU memory" if isinstance(e, torch.OutOfMemoryError) else "memory"
    return ModelError(f"out of {where} while training ({str(e).splitlines()[0][:160]}); lower one of:\n"
                      + "\n".join(f"  - {k}" for k in knobs),
                      "checkpoints already saved stay valid: continue with model.resume=auto")


def write_error(e: OSError, out: Path) -> OutputError:
    """A failed write during training or the final save: remove what it left half-written, say where."""
    removed = remove_partial_outputs(out)
    where = e.filename or out
    reason = os.strerror(e.errno) if e.errno else str(e)
    return OutputError(f"could not write {where}: {reason}"
                       + (f"; removed the partial {', '.join(removed)}" if removed else "")
                       + "; complete checkpoints and earlier outputs are intact",
                       "free space or fix permissions there (or set output_dir elsewhere), then continue with model.resume=auto")


def remove_partial_outputs(out: Path) -> list[str]:
    """Checkpoint folders without tunesmith's completion marker (written last, once every process
    finished its part), and the temporary folders of final/ and merged/."""

    removed = []
    for tmp in (out / ".final.tmp", out / ".merged.tmp"):
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(str(tmp))
    for ckpt in (out / "checkpoints").glob("checkpoint-*"):
        try:
            json.loads((ckpt / MARKER).read_text())
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
            removed.append(str(ckpt))
    return removed
