"""OmegaConf-style `${...}` interpolation for llm-foundry YAMLs (what `om.resolve` does, plus one rescue).

`${max_seq_len}` points at a top-level key, `${variables.global_seed}` into `variables:`, and
`${oc.env:RUN_NAME,default}` at the environment. A whole-value reference keeps the referenced
value's type; one inside a longer string becomes text. Older foundry YAMLs (the shipped
local-dataset example among them) write `${global_seed}` for a key that lives under `variables:`;
llm-foundry itself now stops on that, so we resolve it from `variables:` and say so.
"""
from __future__ import annotations

import os
import re
from typing import Any

from tunesmith.errors import ConfigError

_REF = re.compile(r"\$\{([^${}]+)\}")


def interpolate(raw: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """A copy of `raw` with every `${...}` replaced; notes say which references needed the rescue."""
    rescued: set[str] = set()

    def lookup(ref: str, where: str, seen: tuple[str, ...]) -> Any:
        ref = ref.strip()
        if ref.startswith("oc.env:"):
            name, _, default = ref[len("oc.env:"):].partition(",")
            value = os.environ.get(name.strip())
            if value is None and not default:
                raise ConfigError(f"{where}: ${{{ref}}}: environment variable {name.strip()} is not set")
            return value if value is not None else default.strip().strip("'\"")
        if ref in seen:
            raise ConfigError(f"{where}: ${{{ref}}} refers to itself (through {' -> '.join(seen)})")
        found, value = _get(raw, ref)
        if not found:
            found, value = _get(raw.get("variables") or {}, ref)
            if found:
                rescued.add(ref)
        if not found:
            raise ConfigError(f"{where}: ${{{ref}}} points at no key", "define it at the top level or under variables:")
        return resolve(value, ref, (*seen, ref))

    def resolve(value: Any, where: str, seen: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else str(k), seen) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}[{i}]", seen) for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _REF.fullmatch(value.strip())
        if whole:
            return lookup(whole.group(1), where, seen)
        return _REF.sub(lambda m: str(lookup(m.group(1), where, seen)), value)

    out = resolve(raw, "", ())
    for ref in sorted(rescued):
        notes.append(f"${{{ref}}} -> variables.{ref} = {_get(out.get('variables') or {}, ref)[1]!r} (llm-foundry itself no "
                     f"longer resolves this reference and stops; newer YAMLs write ${{variables.{ref}}})")
    return out


def _get(tree: Any, dotted: str) -> tuple[bool, Any]:
    node = tree
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node
