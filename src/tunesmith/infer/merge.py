"""`tunesmith merge`: a LoRA adapter folded into its base model, saved as a plain model folder
with the prompt settings (the config's; a difference from the adapter's is said). The model card
is the caller's (cli.py, train/run.py): ship/ builds on infer/, not the other way round."""
from __future__ import annotations

from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.data.prompt_settings import PROMPT_FILE, settings_text
from tunesmith.errors import ModelError
from tunesmith.hf import save_folder
from tunesmith.infer.load import load_for_inference
from tunesmith.infer.settings import report_differences


def merge(cfg: Config, adapter: str | None = None, out: str | None = None) -> Path:
    adapter = adapter or str(Path(cfg.resolved_output_dir()) / "final")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter}: no LoRA adapter here (adapter_config.json missing)",
                         "merge takes the final/ folder of a LoRA run, or --adapter PATH")
    report_differences(cfg, adapter)  # the config's prompt settings are the ones merged/ carries
    model, tokenizer = load_for_inference(cfg, adapter)
    target = Path(out) if out else Path(cfg.resolved_output_dir()) / "merged"
    return save_folder(model.merge_and_unload(), tokenizer, target, {PROMPT_FILE: settings_text(cfg.data, cfg.train_data or cfg.resolved_data_dir())})
