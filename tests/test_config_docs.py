"""docs/config.md is the schema's own reference: generated from the field descriptions, never stale."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunesmith.config.docs import REGENERATE, render, undescribed

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_config_md_is_the_generators_output():
    assert DOC.read_text() == render(), f"docs/config.md is stale; regenerate it: {REGENERATE}"


def test_every_key_has_a_description():
    missing = undescribed()
    assert not missing, f"schema fields without description= (docs/config.md would say nothing): {missing}"


class _S(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Leaf(_S):
    """A leaf."""

    depth: int = Field(3, ge=1, description="how deep")


class Mode(str, Enum):
    FAST = "fast"
    SAFE = "safe"


class Node(_S):
    child: Node | None = Field(None, description="the same model again")
    leaves: dict[str, Leaf] = Field(default_factory=dict, description="named leaves")


class Root(_S):
    kind: Literal["a", "b"] = Field("a", description="a literal")
    need: str = Field(description="required")
    either: str | Leaf = Field("x", description="a name or a leaf")
    many: list[Leaf] = Field(default_factory=list, description="a list of leaves")
    node: Node = Field(default_factory=Node, description="nested")
    extra: dict[str, Any] = Field(default_factory=dict, description="free-form")
    modes: dict[str, Mode] = Field(default_factory=lambda: {"x": Mode.SAFE}, description="an enum per name")
    leaf_map: dict[str, Leaf] = Field(default_factory=lambda: {"one": Leaf()}, description="models by name")
    hidden: str = Field("", exclude=True, description="bookkeeping")


def test_generator_follows_nested_models_lists_dicts_unions_and_literals():
    text = render(Root)
    for row in ("| `kind` | one of `a`, `b` | `\"a\"` | a literal |", "| `need` | `str` | **required** | required |",
                "| `either` | `str` or [mapping](#either) | `\"x\"` | a name or a leaf |",
                "| `many` | list of [mapping](#either) | `[]` |", "| `node.child` | [mapping](#node) | not set |",
                "| `node.leaves` | mapping of `str` to [mapping](#either) | `{}` |",
                "| `either.depth` | `int` (>= 1) | `3` | how deep |", "| `extra` | mapping of `str` to any | `{}` |",
                "| `modes` | mapping of `str` to one of `fast`, `safe` | `{\"x\": \"safe\"}` | an enum per name |",
                "| `leaf_map` | mapping of `str` to [mapping](#either) | `{\"one\": {\"depth\": 3}}` | models by name |"):
        assert row in text, f"missing row {row!r} in\n{text}"
    assert text.count("## `either`") == 1 and "Also at: `leaf_map.<key>`, `many[]`, `node.leaves.<key>`." in text  # one section per model
    assert "hidden" not in text
    assert undescribed(Root) == []
