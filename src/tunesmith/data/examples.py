"""Any row shape -> one normalized example (pure functions, no tokenizer).

Normalized shapes:
  {"kind": "input", "input": str, "contexts": [str], "response": str}   (two-step and prompt/response rows)
  {"kind": "chat", "messages": [{"role", "content", ...}], "tools": [...] | None}   (chat rows: conversations.py)
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable

from tunesmith.config.schema import ChatConfig
from tunesmith.data.conversations import conversation, normalize_tools
from tunesmith.data.sources import user_frame
from tunesmith.errors import row_error


def detect_format(columns: list[str] | set[str]) -> str:
    """Which row shape the (renamed) columns describe; '' when none fits."""
    cols = set(columns)
    if "messages" in cols or "conversations" in cols:
        return "chat"
    if "input" in cols and "response" in cols:
        return "input"
    if "prompt" in cols and ("response" in cols or "completion" in cols):
        return "prompt_response"
    return ""


def rename_columns(row: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """Apply `columns: {canonical: yours}`; the user's name wins over a same-named original."""
    if not columns:
        return row
    out = {k: v for k, v in row.items() if k not in columns.values()}
    for canonical, yours in columns.items():
        if yours in row:
            out[canonical] = row[yours]
    return out


def apply_preprocessing(row: dict[str, Any], fn: Callable, fn_name: str, index: int) -> dict[str, Any]:
    try:
        out = fn(row)
    except Exception as e:
        raise row_error(index, f"preprocessing function {fn_name} raised {type(e).__name__}{user_frame(e)}: {e}") from None
    if not isinstance(out, dict):
        raise row_error(index, f"preprocessing function {fn_name} returned {type(out).__name__}, not a dict",
                        "return {'prompt': ..., 'response': ...}, {'input': ..., 'response': ...} or {'messages': [...]}")
    return out


def normalize(row: dict[str, Any], fmt: str, index: int, chat: ChatConfig | None = None,
              prompt: bool = False, default_tools: list[dict] | None = None) -> dict[str, Any]:
    """Validate one row of the given format and return its normalized example (`prompt`: a row
    to generate from, whose history may hold an empty answer; `default_tools`: data.chat.tools,
    normalised, for rows without a `tools` column)."""
    if fmt == "chat":
        chat = chat or ChatConfig()
        if row.get("messages") is None and row.get("conversations") is None:
            raise row_error(index, f"has fields {sorted(row)} but no 'messages' or 'conversations'",
                            "map your column with data.columns, e.g. {messages: dialog}")
        found = conversation(row, chat.roles, chat.reasoning, index, history=prompt)
        tools = normalize_tools(row["tools"], index) if row.get("tools") is not None else default_tools
        reasoning = sum(1 for m in found["messages"] if m.get("reasoning"))
        return {"kind": "chat", **found, "tools": tools, "reasoning_turns": reasoning}
    if fmt == "prompt_response":
        response_key = "response" if "response" in row else "completion"
        return {"kind": "input", "input": _text(row, "prompt", index), "contexts": [],
                "response": _response(row, response_key, index)}
    if fmt == "input":
        return {"kind": "input", "input": _text(row, "input", index), "contexts": _contexts(row, index),
                "response": _response(row, "response", index)}
    raise row_error(index, f"has fields {sorted(row)}, which match no known format",
                    "rows need input+response, prompt+response/completion, or messages; "
                    "map other names with data.columns or data.preprocessing_fn")


def _text(row: dict, key: str, index: int) -> str:
    if key not in row or row[key] is None:
        raise row_error(index, f"missing required field {key!r} (fields: {sorted(row)})",
                        "map your column names with data.columns, e.g. {prompt: question}")
    value = row[key]
    if not isinstance(value, str):
        raise row_error(index, f"field {key!r} must be a string, got {type(value).__name__}: {str(value)[:60]!r}")
    return value


def _response(row: dict, key: str, index: int) -> str:
    value = _text(row, key, index)
    if not value.strip():
        raise row_error(index, f"field {key!r} is empty: there is nothing to learn",
                        "fix or remove the row, or set data.bad_rows: skip to count and skip such rows")
    return value


def _contexts(row: dict, index: int) -> list[str]:
    key = "contexts" if "contexts" in row else "context"
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, (list, tuple)) and all(isinstance(c, str) for c in value):
        return [c for c in value if c]
    raise row_error(index, f"field {key!r} must be a list of strings, got {type(value).__name__}: {str(value)[:60]!r}")
