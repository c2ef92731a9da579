"""Set a dotted key (`data.max_length`) in a raw config mapping: command-line overrides and the
llm-foundry translation both write keys this way. Its own module, so config/load.py and the
translators it imports do not import each other."""
from __future__ import annotations

from typing import Any

from tunesmith.errors import ConfigError


# Sections a config may give in a short form: `objective: dpo` is `objective: {name: dpo}`.
SHORT_FORMS = {"objective": "name"}


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if depth == 0 and part in SHORT_FORMS and isinstance(node.get(part), str):
            node[part] = {SHORT_FORMS[part]: node[part]}
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value
