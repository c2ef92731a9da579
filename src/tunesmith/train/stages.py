"""The post-training recipe a model went through, saved with it (`tunesmith_stages.json`).

Each run appends its stage to the stages of the model it started from (when that model is a
tunesmith folder that has the file), so a DPO model trained from an SFT model's folder says both
steps: its model card lists them, in order, with the data and objective of each."""
from __future__ import annotations

import json
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.data.sources import describe_source

STAGES_FILE = "tunesmith_stages.json"


def read_stages(folder: str | Path) -> list[dict]:
    path = Path(folder).expanduser() / STAGES_FILE
    if not path.is_file():
        return []
    try:
        stages = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return stages if isinstance(stages, list) else []


def this_stage(cfg: Config) -> dict:
    objective = cfg.objective
    stage = {"run": cfg.name, "objective": objective.name, "method": cfg.model.method, "base_model": cfg.base_model,
             "data": describe_source(cfg.data.train) if cfg.data.train else (cfg.train_data or "")}
    if objective.name != "sft":
        stage["beta"] = objective.resolved_beta()
    return stage


def stages_text(cfg: Config) -> str:
    return json.dumps([*read_stages(cfg.base_model), this_stage(cfg)], indent=2) + "\n"
