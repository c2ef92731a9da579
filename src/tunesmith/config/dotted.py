"""Set a dotted key (`data.max_length`) in a raw config mapping: command-line overrides and the
llm-foundry translation both write keys this way. Its own module, so config/load.py and the
translators it imports do not import each other."""
from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value
