"""`tunesmith merge`: a LoRA adapter folded into its base model, saved as a plain model folder."""
from __future__ import annotations

from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.errors import ModelError
from tunesmith.hf import save_folder
from tunesmith.infer.load import load_for_inference
from tunesmith.ship.card import write_card


def merge(cfg: Config, adapter: str | None = None, out: str | None = None) -> Path:
    adapter = adapter or str(Path(cfg.resolved_output_dir()) / "final")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter}: no LoRA adapter here (adapter_config.json missing)",
                         "merge takes the final/ folder of a LoRA run, or --adapter PATH")
    model, tokenizer = load_for_inference(cfg, adapter)
    target = Path(out) if out else Path(cfg.resolved_output_dir()) / "merged"
    saved = save_folder(model.merge_and_unload(), tokenizer, target)
    write_card(saved, cfg)
    return saved
