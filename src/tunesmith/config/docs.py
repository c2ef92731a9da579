"""docs/config.md, generated from the schema: every key with its path, type, default and description.

The schema's `description=` texts are the only hand-written documentation of the keys, so the
reference cannot drift from what the loader accepts (tests/test_config_docs.py fails when the
file is stale). Regenerate with `make docs`, or:

    PYTHONPATH=src python -m tunesmith.config.docs > docs/config.md
"""
from __future__ import annotations

import json
import re
import types
import typing
from enum import Enum
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REGENERATE = "make docs  (or: PYTHONPATH=src python -m tunesmith.config.docs > docs/config.md)"

HEADER = """\
# Config reference

<!-- Generated from src/tunesmith/config/schema.py and train_schema.py by
     `python -m tunesmith.config.docs`; edit the fields' descriptions there, then `make docs`. -->

Every key a tunesmith config may hold, section by section, with its type, default and meaning.
Unknown keys fail before any work starts, naming the closest valid key. Any key can be
overridden on the command line as `KEY=VALUE` with its dotted path
(`tunesmith prep cfg.yaml data.max_length=1024`). Relative paths resolve against the config
file's folder. `tunesmith init DIR` writes a starter config.

`training:` takes any `transformers.TrainingArguments` field; tunesmith's defaults for it are in
[training.md](training.md#trainingarguments). Configs written for the two-step workflow or for
llm-foundry are translated into these keys: [compat.md](compat.md).
"""


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def _cell(text: str) -> str:
    # A table cell is one line, and `|` would end it; outside code spans, `<name>` would be read as HTML.
    parts = " ".join(text.split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


def _models_in(annotation: Any, path: str) -> list[tuple[str, type[BaseModel]]]:
    """(path, model) for every pydantic model an annotation can hold: unions keep the path,
    lists add `[]`, dicts `.<key>`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(path, annotation)]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return [m for a in args for m in _models_in(a, path)]
    if origin in (list, tuple, set, frozenset):
        return [m for a in args if a is not Ellipsis for m in _models_in(a, path + "[]")]
    if origin is dict and len(args) == 2:
        return _models_in(args[1], path + ".<key>")
    if origin is typing.Annotated:
        return _models_in(args[0], path)
    return []


def type_text(annotation: Any, sections: dict[type, str]) -> str:
    """A reader's name for a type: `str`, one of `a`, `b`, list of ..., a link to a model's section."""
    if annotation is type(None):
        return "`null`"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        path = sections.get(annotation)
        return f"[mapping](#{slug(path)})" if path else "mapping"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{json.dumps(a) if isinstance(a, str) and not a.strip() else a}`" for a in args)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]  # "not set" shows in the default column
        return " or ".join(type_text(a, sections) for a in parts) if parts else "`null`"
    if origin in (list, tuple, set, frozenset):
        inner = [a for a in args if a is not Ellipsis]
        return "list of " + (_inner(inner[0], sections) if inner else "any")
    if origin is dict:
        return f"mapping of {_inner(args[0], sections)} to {_inner(args[1], sections)}" if args else "mapping"
    if origin is typing.Annotated:
        return type_text(args[0], sections)
    if isinstance(annotation, type):
        return f"`{annotation.__name__}`"
    return f"`{annotation}`"


def _inner(annotation: Any, sections: dict[type, str]) -> str:
    # A union inside a list or mapping is bracketed, so "or" binds where it should.
    text = type_text(annotation, sections)
    return f"({text})" if " or " in text else text


def constraints_text(field: FieldInfo) -> str:
    bounds = {annotated_types.Gt: (">", "gt"), annotated_types.Ge: (">=", "ge"),
              annotated_types.Lt: ("<", "lt"), annotated_types.Le: ("<=", "le")}
    parts = []
    for m in field.metadata:
        for kind, (sign, attr) in bounds.items():
            if isinstance(m, kind):
                parts.append(f"{sign} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            parts.append(f"matches `{m.pattern}`")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    try:
        value = field.get_default(call_default_factory=True, validated_data={})
    except (TypeError, KeyError, ValueError):  # a factory that reads other fields' values: its default depends on them
        return "depends on other keys"
    if value is PydanticUndefined or value is None:
        return "not set"
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{json.dumps(value, default=_plain)}`"


def _plain(value: Any) -> Any:
    """A default's JSON form: models as their fields, enums as their values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    return str(value)


def _documented(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    # `exclude=True` fields are tunesmith's own bookkeeping (set by the compat translators).
    return [(name, f) for name, f in model.model_fields.items() if not f.exclude]


def collect(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Every (section path, model) under root, depth first in field order; a model that appears
    at several paths (data.train, data.eval) gets one section, at its first path."""
    seen: dict[type[BaseModel], str] = {}
    order: list[tuple[str, type[BaseModel]]] = []

    def visit(path: str, model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen[model] = path
        order.append((path, model))
        for name, field in _documented(model):
            for sub_path, sub in _models_in(field.annotation, f"{path}.{name}" if path else name):
                visit(sub_path, sub)

    visit("", root)
    return order


def render(root: type[BaseModel] | None = None) -> str:
    if root is None:
        from tunesmith.config.schema import Config

        root = Config
    order = collect(root)
    sections = {model: path or "Top level" for path, model in order}
    out = [HEADER]
    for path, model in order:
        title = path or "Top level"
        out.append(f"## `{title}`\n" if path else f"## {title}\n")
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(("A base class", "Usage docs")):  # pydantic's own docstring
            out.append(" ".join(doc.split()) + "\n")
        others = sorted({p for p, m in _all_paths(root) if m is model and p != path})
        if others:
            out.append("Also at: " + ", ".join(f"`{p}`" for p in others) + ".\n")
        out.append("| key | type | default | description |\n|---|---|---|---|")
        for name, field in _documented(model):
            key = f"{path}.{name}" if path else name
            kind = type_text(field.annotation, sections)
            limits = constraints_text(field)
            out.append("| " + " | ".join(_cell(c) for c in (
                f"`{key}`", kind + (f" ({limits})" if limits else ""), default_text(field),
                field.description or "")) + " |")
        out.append("")
    return "\n".join(out)


def _all_paths(root: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """Every path a model is reachable at (a model used twice has two)."""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(path: str, model: type[BaseModel], stack: tuple) -> None:
        found.append((path, model))
        for name, field in _documented(model):
            for sub_path, sub in _models_in(field.annotation, f"{path}.{name}" if path else name):
                if sub not in stack:  # a model that holds itself would never end
                    walk(sub_path, sub, stack + (sub,))

    walk("", root, (root,))
    return found


def undescribed(root: type[BaseModel] | None = None) -> list[str]:
    """Documented keys whose field has no description (each key's meaning belongs in the schema)."""
    if root is None:
        from tunesmith.config.schema import Config

        root = Config
    return [f"{path}.{name}" if path else name for path, model in collect(root)
            for name, field in _documented(model) if not (field.description or "").strip()]


if __name__ == "__main__":
    print(render(), end="")
