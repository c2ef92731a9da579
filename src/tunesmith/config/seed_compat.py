"""Other frameworks' YAML shapes -> tunesmith's schema. Filled in with the fine-tuning step."""
from __future__ import annotations

from typing import Any


def translate_if_seed(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return raw, []
