"""How tunesmith's built-in prompt formats write tools, tool calls, tool results and reasoning,
and how an answer is read back into content, reasoning and tool calls at inference.

The built-in formats use the tags many open models were trained with (Hermes, Qwen2.5, Qwen3):
<tools> in the system turn, <tool_call> blocks of JSON in the answer, <tool_response> blocks in
the turn after it, <think> before the answer. The reader also takes the shapes other chat
templates produce (Llama 3.1's bare JSON object, Mistral's [TOOL_CALLS] list).
"""
from __future__ import annotations

import json
import re
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_THOUGHT = re.compile(r"^\s*(?:<think>)?(.*?)</think>\s*", re.DOTALL)


def tools_text(tools: list[dict]) -> str:
    schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou can call these functions. Their signatures are inside <tools></tools>:\n<tools>\n"
            f"{schemas}\n</tools>\n\nTo call one, write a JSON object with its name and arguments inside "
            '<tool_call></tool_call>:\n<tool_call>\n{"name": <function name>, "arguments": <arguments object>}\n</tool_call>')


def calls_text(calls: list[dict]) -> str:
    return "\n".join(f"{CALL_OPEN}\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}, ensure_ascii=False)
                     + f"\n{CALL_CLOSE}" for c in calls)


def result_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


def reasoning_text(reasoning: str) -> str:
    return f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n"


# The parts previews and the report page mark apart: these tags, and the other templates' call markers.
PART_PATTERN = re.compile(r"(?P<tool_call><tool_call>.*?</tool_call>|\[TOOL_CALLS\]\S*|<\|python_tag\|>)"
                          r"|(?P<tool_result><tool_response>.*?</tool_response>|\[TOOL_RESULTS\].*?\[/TOOL_RESULTS\])"
                          r"|(?P<reasoning><think>.*?</think>)", re.DOTALL)


def parts_of(text: str) -> list[tuple[str, str | None]]:
    """Text -> pieces, each with its kind: "tool_call", "tool_result", "reasoning" or None."""
    out, pos = [], 0
    for m in PART_PATTERN.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        out.append((m.group(), m.lastgroup))
        pos = m.end()
    return out + ([(text[pos:], None)] if pos < len(text) else [])


def answer_content(turn: dict) -> str:
    """An assistant turn's text after any reasoning: its content, then its tool calls."""
    calls = calls_text(turn.get("tool_calls") or [])
    return "\n".join(x for x in (turn["content"], calls) if x)


def read_answer(text: str) -> dict[str, Any]:
    """Generated text -> {"content", "reasoning" (or None), "tool_calls": [{"name", "arguments"}]}.
    A call whose JSON does not parse is kept as {"name": None, "raw": text}, so it is shown, not lost."""
    reasoning = None
    if THINK_CLOSE in text and (found := _THOUGHT.match(text)):
        reasoning, text = found.group(1).strip(), text[found.end():]
    calls = [_call(m.group(1)) for m in _CALL.finditer(text)]
    if calls:
        text = _CALL.sub("", text).strip()  # the text around the calls stays the answer's
    else:
        calls, text = _bare_calls(text)
    return {"content": text, "reasoning": reasoning, "tool_calls": calls}


def _call(raw: str) -> dict:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return {"name": None, "raw": raw}
    return _as_call(value) or {"name": None, "raw": raw}


def _as_call(value: Any, bare: bool = False) -> dict | None:
    """{"name", "arguments"} from a parsed call; `bare` (JSON with no tags around it) also needs an
    arguments or parameters key, so an answer that is merely a JSON object with a name is not a call."""
    if bare and not (isinstance(value, dict) and ("arguments" in value or "parameters" in value)):
        return None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        args = value.get("arguments", value.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass
        return {"name": value["name"], "arguments": args}
    return None


def _bare_calls(text: str) -> tuple[list[dict], str]:
    """Llama 3.1 answers a call with a bare JSON object; Mistral with [TOOL_CALLS] and a list."""
    body = text.strip().removeprefix("[TOOL_CALLS]").strip()
    if not body.startswith(("{", "[")):
        return [], text
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return [], text
    calls = [_as_call(v, bare=True) for v in (value if isinstance(value, list) else [value])]
    return ([c for c in calls if c], "") if calls and all(calls) else ([], text)
