"""Which checkpoint to resume from, and when a checkpoint counts as complete.

The Trainer writes a checkpoint from every process (the main process writes the weights, the
optimizer and trainer_state.json; every process its RNG state; sharded engines their shards),
and nothing marks the end of all of them. So after each save every process waits for the others
and the main process then writes `tunesmith_checkpoint.json`, last: a folder without it was cut
short (a crash, a kill, a full disk) and is never resumed from. The marker also records the
process count and batch layout the checkpoint was made with, since resuming with another one
would replay a different order of batches.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from transformers import TrainerCallback

from tunesmith.errors import ConfigError
from tunesmith.train.distributed import barrier, broadcast, is_main_process

MARKER = "tunesmith_checkpoint.json"
LAYOUT_KEYS = ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps")


def layout(args) -> dict:
    return {key: getattr(args, key) for key in LAYOUT_KEYS}


class MarkCompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        barrier()  # every process has written its part
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                tmp = folder / f".{MARKER}.tmp"
                tmp.write_text(json.dumps({"step": state.global_step, **layout(args)}))
                os.replace(tmp, folder / MARKER)


def step_of(folder: Path) -> int:
    tail = folder.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def latest_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint whose marker exists; folders without one are skipped, and said."""
    for ckpt in sorted(folder.glob("checkpoint-*"), key=step_of, reverse=True):
        try:
            json.loads((ckpt / MARKER).read_text())
            return str(ckpt)
        except (OSError, ValueError):
            print(f"tunesmith: skipping {ckpt.name}: incomplete (the run stopped while saving it)", file=sys.stderr)
    return None


def check_layout(ckpt: str, args) -> None:
    """Resuming with another process count or batch layout would not continue the same run."""
    try:
        saved = json.loads((Path(ckpt) / MARKER).read_text())
    except (OSError, ValueError):
        return  # a folder named by the user, made without tunesmith: nothing recorded to check
    now = layout(args)
    diffs = [f"{k} {saved[k]} then, {now[k]} now" for k in LAYOUT_KEYS if k in saved and saved[k] != now[k]]
    if diffs:
        raise ConfigError(f"{ckpt} was made with another launch: " + "; ".join(diffs),
                          "resume with the same number of processes and batch settings, or set model.resume: never")


def resume_point(resume: str, checkpoints: str, args) -> str | None:
    """The checkpoint to resume from, chosen by the main process for all of them."""
    if resume == "never":
        return None
    if resume == "auto":
        chosen = broadcast(latest_complete_checkpoint(Path(checkpoints)) if is_main_process() else None)
    elif not Path(resume).is_dir():
        raise ConfigError(f"model.resume: checkpoint folder {resume!r} not found", "use auto, never, or a checkpoint-N folder")
    else:
        chosen = resume
    if chosen is not None:
        check_layout(chosen, args)
    return chosen


def is_finished(ckpt: str | None) -> bool:
    """The checkpoint is the run's last step (a kill came after it, before final/ was written).
    Resumed from there, the Trainer would take one step past the end, so nothing is left to train."""
    if ckpt is None:
        return False
    try:
        state = json.loads((Path(ckpt) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("max_steps", 0) > 0 and state.get("global_step", 0) >= state["max_steps"]


def load_finished(trainer, ckpt: str):
    """The weights and state of a finished run's last checkpoint, as if training had just ended."""
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(ckpt)
    trainer.state = TrainerState.load_from_json(str(Path(ckpt) / "trainer_state.json"))
    print(f"tunesmith: {Path(ckpt).name} is the run's last step: nothing left to train", file=sys.stderr)
    return TrainOutput(trainer.state.global_step, 0.0, {"train_runtime": 0.0})
