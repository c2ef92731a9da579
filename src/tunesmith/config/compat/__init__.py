"""Other frameworks' YAML shapes -> tunesmith's schema, saying what was translated.

two_step.py: Saturn Cloud's two-step workflow (dataprep.yaml / finetune.yaml);
foundry.py: llm-foundry's fine-tuning YAML (`composer train.py X.yaml`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Translated:
    raw: dict[str, Any]
    framework: str = ""  # "" for tunesmith's own schema
    notes: list[str] = field(default_factory=list)
    key_names: dict[str, str] = field(default_factory=dict)  # tunesmith key -> the user's key, for error messages


def translate_other_framework(raw: dict[str, Any], overrides: list[tuple[str, Any]], path: Path) -> Translated:
    """`overrides` are applied here only for llm-foundry files (they name foundry keys, as with composer)."""
    from tunesmith.config.compat import foundry, two_step

    if foundry.is_foundry(raw):
        out, notes = foundry.translate(raw, overrides, Path.cwd(), path)
        return Translated(out, foundry.SOURCE, notes, foundry.KEY_NAMES)
    out, notes = two_step.translate_if_seed(raw)
    if not notes:
        return Translated(out)
    return Translated(out, two_step.SOURCE, notes, two_step.KEY_NAMES)
