"""The chat shapes public data comes in -> one typed conversation, normalised once (pure functions).

Read: OpenAI `messages` (content a string, null, or a list of text parts), ShareGPT
`conversations` (`from`/`value`, LLaMA-Factory's `function_call`/`observation` turns included),
assistant `tool_calls` (arguments a JSON string or an object), `tool` turns, a `tools` column (or
data.chat.tools), reasoning as `reasoning_content` / `reasoning` or a leading <think> block.

A normalised message is {"role", "content": str} plus, where they apply, "reasoning": str,
"tool_calls": [{"id": str | None, "name": str, "arguments": dict}] (arguments parsed once, so a
template's `tojson` never double-encodes a string), "tool_call_id" and "name" on tool turns.

Rows read from Arrow (parquet, a Dataset) carry every key of a struct column, absent ones as null:
a null is read as absent throughout (`_get`), and null-valued keys inside object arguments and
schemas given as objects are dropped, since a null there cannot be told from an absent key.
"""
from __future__ import annotations

import json
import re
from typing import Any

from tunesmith.errors import row_error

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"ipython": "tool", "function": "tool"}  # Llama 3.1's tool results; OpenAI's legacy function results
# ShareGPT `from` values (and LLaMA-Factory's) -> roles; data.chat.roles adds to or overrides these.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "tool": "tool", "observation": "tool", "ipython": "tool",
                  "function_response": "tool", "function_call": "function_call"}
# What may follow each role (None: the start, after a system message). A tool turn must answer a call.
_MAY_FOLLOW = {None: {"user"}, "user": {"assistant"}, "assistant": {"user", "tool"}, "tool": {"assistant", "tool"}}
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
TEXT_PARTS = ("text", "input_text", "output_text")


def _get(d: dict, key: str, default: Any = None) -> Any:
    """d[key], with a null read as absent (Arrow fills a struct's absent keys with null)."""
    value = d.get(key)
    return default if value is None else value


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def raw_messages(row: dict[str, Any], roles: dict[str, str], index: int) -> list[dict[str, Any]]:
    """The row's turns as OpenAI-style dicts: `messages` as they are, ShareGPT `conversations` mapped."""
    if row.get("messages") is not None:
        messages = row["messages"]
        if not isinstance(messages, (list, tuple)) or not messages:
            raise row_error(index, "field 'messages' must be a non-empty list of {role, content}")
        return list(messages)
    turns = row.get("conversations")
    if not isinstance(turns, (list, tuple)) or not turns:
        raise row_error(index, "field 'conversations' must be a non-empty list of {from, value}")
    names = {**SHAREGPT_ROLES, **roles}
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise row_error(index, f"conversations[{i}] must be an object {{from, value}}, got {str(t)[:80]!r}")
        if _get(t, "from") is None and _get(t, "role") is not None:  # OpenAI's keys inside `conversations`
            out.append(t)
            continue
        who = t.get("from")
        if who not in names:
            raise row_error(index, f"conversations[{i}] is from {who!r}, which is not a known role",
                            f"map it with data.chat.roles, e.g. {{{who}: assistant}} (known: {', '.join(sorted(names))})")
        role, value = names[who], _get(t, "value")
        if role == "function_call":  # LLaMA-Factory: the assistant's call, as JSON text
            out.append({"role": "assistant", "content": None, "tool_calls": _parsed_calls(value, index, f"conversations[{i}]")})
        else:
            out.append({"role": role, "content": value})
    return out


def conversation(row: dict[str, Any], roles: dict[str, str], reasoning: str, index: int,
                 history: bool = False) -> dict[str, Any]:
    """A chat row -> {"messages": normalised, validated messages, "trailing_removed": n}.
    `reasoning` drop removes reasoning here; train and mask keep it for rendering. `history`: the
    row is a prompt (chat history), where a model's earlier answer may have been empty."""
    messages, previous, pending = [], None, []  # pending: the last assistant turn's tool calls
    for i, m in enumerate(raw_messages(row, roles, index)):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise row_error(index, f"{where} must be an object with a string 'role', got {str(m)[:80]!r}")
        role = ROLE_ALIASES.get(m["role"], m["role"])
        if role not in ROLES:
            raise row_error(index, f"{where} has role {role!r}; roles are {', '.join(ROLES)}",
                            "map other role names with data.chat.roles")
        if role == "system":
            if i != 0:
                raise row_error(index, f"{where}: a system message may only come first")
        elif role not in _MAY_FOLLOW[previous]:
            after = f"after {previous!r}" if previous else "at the start"
            raise row_error(index, f"{where}: role {role!r} cannot come {after}; expected one of {sorted(_MAY_FOLLOW[previous])}")
        msg = {"role": role, "content": content_text(_get(m, "content"), index, where)}
        if role == "assistant":
            msg = _assistant(m, msg, reasoning, index, where, history)
            pending = msg.get("tool_calls", [])
        elif role == "tool":
            if previous == "assistant" and not pending:
                raise row_error(index, f"{where}: a tool result with no tool call before it",
                                "the assistant turn before a tool turn needs tool_calls")
            msg.update(_tool_fields(m, messages, pending))
        messages.append(msg)
        if role != "system":
            previous = role
    n = len(messages)
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()  # trailing user/tool turns have nothing to learn from
    if not messages:
        raise row_error(index, "has no assistant turn: there is nothing to learn",
                        "each conversation needs at least one assistant message with content or tool calls")
    return {"messages": messages, "trailing_removed": n - len(messages)}


def content_text(content: Any, index: int, where: str) -> str:
    """A string, null (""), or a list of text parts joined by newlines; other parts are refused by name."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for j, part in enumerate(content):
            kind = _get(part, "type", "text") if isinstance(part, dict) else type(part).__name__
            if kind not in TEXT_PARTS or not isinstance(_get(part, "text"), str):
                raise row_error(index, f"{where}.content[{j}] is a {kind!r} part: only text is supported "
                                       "(images, audio and files are not: tunesmith trains text-only models)",
                                "remove non-text parts, or the rows that have them")
            texts.append(part["text"])
        return "\n".join(texts)
    raise row_error(index, f"{where}.content must be a string, null or a list of text parts, "
                           f"got {type(content).__name__}: {str(content)[:60]!r}")


def _assistant(m: dict, msg: dict, reasoning: str, index: int, where: str, history: bool = False) -> dict:
    thought = _get(m, "reasoning_content", _get(m, "reasoning"))
    if thought is not None and not isinstance(thought, str):
        raise row_error(index, f"{where}.reasoning_content must be a string, got {type(thought).__name__}")
    if thought is None and (found := _THINK.match(msg["content"])):
        thought, msg["content"] = found.group(1).strip("\n"), msg["content"][found.end():]
    calls = _parsed_calls(_get(m, "tool_calls"), index, where) if _get(m, "tool_calls") else []
    if calls:
        msg["tool_calls"] = calls
    if thought and thought.strip() and reasoning != "drop":
        msg["reasoning"] = thought
    if not msg["content"].strip() and not calls and not history:
        raise row_error(index, f"{where}: an assistant turn with neither content nor tool calls",
                        "fix or remove the row, or set data.bad_rows: skip to count and skip such rows")
    return msg


def _parsed_calls(calls: Any, index: int, where: str) -> list[dict]:
    if isinstance(calls, str):  # LLaMA-Factory's function_call value, or a column stored as JSON text
        calls = _json(calls, index, f"{where} (a tool call)")
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, (list, tuple)):
        raise row_error(index, f"{where}.tool_calls must be a list, got {type(calls).__name__}")
    out = []
    for j, call in enumerate(calls):
        here = f"{where}.tool_calls[{j}]"
        fn = _get(call, "function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(_get(fn, "name"), str) or not fn["name"]:
            raise row_error(index, f"{here} needs a function name ({{function: {{name, arguments}}}}), got {str(call)[:80]!r}")
        args = _get(fn, "arguments", _get(fn, "parameters", {}))
        if isinstance(args, str):
            args = _json(args, index, f"{here}.function.arguments") if args.strip() else {}
        else:
            args = _without_nulls(args)
        if not isinstance(args, dict):
            raise row_error(index, f"{here}.function.arguments must be a JSON object, got {type(args).__name__}: {str(args)[:60]!r}")
        call_id = _get(call, "id") if isinstance(_get(call, "id"), str) else None
        out.append({"id": call_id, "name": fn["name"], "arguments": args})
    return out


def _json(text: str, index: int, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise row_error(index, f"{where} is not valid JSON ({e.msg} at character {e.pos}): {text[:60]!r}",
                        "fix the row, or set data.bad_rows: skip to count and skip such rows") from None


def _tool_fields(m: dict, messages: list[dict], calls: list) -> dict:
    """A tool turn's call id and function name; the name comes from its call (`calls`: the last
    assistant turn's) when the row omits it."""
    call_id = _get(m, "tool_call_id") if isinstance(_get(m, "tool_call_id"), str) else None
    name = _get(m, "name") if isinstance(_get(m, "name"), str) else None
    answered = 0  # tool turns since that call: without ids, results answer the calls in order
    for x in reversed(messages):
        if x["role"] != "tool":
            break
        answered += 1
    call = next((c for c in calls if call_id and c["id"] == call_id), None)
    if call is None and answered < len(calls):
        call = calls[answered]
    out = {}
    if call_id or (call and call["id"]):
        out["tool_call_id"] = call_id or call["id"]
    if name or call:
        out["name"] = name or call["name"]
    return out


def normalize_tools(tools: Any, index: int) -> list[dict] | None:
    """A row's or the config's tool schemas -> OpenAI's {type: function, function: {...}} form."""
    if tools is None:
        return None
    if isinstance(tools, str):
        tools = _json(tools, index, "field 'tools'") if tools.strip() else []
    if not isinstance(tools, (list, tuple)):
        raise row_error(index, f"field 'tools' must be a list of function schemas, got {type(tools).__name__}")
    out = []
    for j, t in enumerate(tools):
        fn = _get(t, "function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(_get(fn, "name"), str):
            raise row_error(index, f"tools[{j}] needs a function name ({{type: function, function: {{name, parameters}}}}), "
                                   f"got {str(t)[:80]!r}")
        out.append({"type": "function", "function": _without_nulls(fn)})
    return out or None
