"""`tunesmith chat`: talk to a model in the terminal, rendered exactly as in training.

Each answer is read back (data/tool_text.read_answer): reasoning is shown apart from the answer,
and a tool call is printed as parsed JSON. After a tool call, the next line you type is the tool's
result (a `tool` turn), and the model answers from it.
"""
from __future__ import annotations

import json
import sys
from typing import TextIO

from tunesmith.config.schema import Config
from tunesmith.data.render import make_renderer
from tunesmith.data.tool_text import read_answer
from tunesmith.infer.generate import generate
from tunesmith.infer.load import load_for_inference
from tunesmith.infer.settings import inference_config


def chat(cfg: Config | None, model_path: str | None, max_new_tokens: int = 256,
         stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, tools: list[dict] | None = None) -> list[dict]:
    """Each line you type is a user turn (a tool result after a tool call); `/reset` clears the
    history, an empty line or EOF ends. `cfg` None: the prompt settings saved with `model_path`.
    `tools`: function schemas offered to the model (default: data.chat.tools of the settings)."""
    cfg = inference_config(cfg, model_path, "chat")
    model, tokenizer = load_for_inference(cfg, model_path)
    renderer = make_renderer(cfg.data, tokenizer, preprocessing=False)  # typed text is already a prompt
    tools = tools if tools is not None else cfg.data.chat.tools
    messages: list[dict] = []
    interactive = stdin.isatty()
    pending: list[dict] = []  # calls of the last answer still waiting for their result, in order
    while True:
        if interactive:
            stdout.write(f"tool {pending[0]['function']['name']}> " if pending else "you> ")
            stdout.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        if line.strip() == "/reset":
            messages, pending = [], []
            continue
        if pending:
            call = pending.pop(0)
            messages.append({"role": "tool", "content": line.rstrip("\n"), "name": call["function"]["name"],
                             "tool_call_id": call["id"]})
            if pending:
                continue  # the model answers once every call has its result
        else:
            messages.append({"role": "user", "content": line.rstrip("\n")})
        row = {"messages": list(messages), **({"tools": tools} if tools else {})}
        answer = read_answer(generate(model, tokenizer, renderer, [row], max_new_tokens=max_new_tokens)[0])
        messages.append(assistant_turn(answer, len(messages)))
        pending = list(messages[-1].get("tool_calls", []))
        stdout.write(show(answer, interactive) + "\n")
        stdout.flush()
    return messages


def assistant_turn(answer: dict, position: int) -> dict:
    """A read answer -> the assistant message the history keeps (calls get ids, as templates want)."""
    turn = {"role": "assistant", "content": answer["content"]}
    calls = [c for c in answer["tool_calls"] if c.get("name")]
    if calls:
        # Mistral's template wants ids of 9 letters and digits.
        turn["tool_calls"] = [{"id": f"call{position:03d}{k:02d}", "type": "function",
                               "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                              for k, c in enumerate(calls)]
    if answer["reasoning"]:
        turn["reasoning_content"] = answer["reasoning"]
    return turn


def show(answer: dict, interactive: bool) -> str:
    lines = []
    if answer["reasoning"]:
        lines.append(f"thinking: {answer['reasoning']}")
    if answer["content"] or not answer["tool_calls"]:
        lines.append(("model> " if interactive else "") + answer["content"])
    for c in answer["tool_calls"]:
        shown = {"name": c["name"], "arguments": c.get("arguments")} if c.get("name") else {"unparsed_tool_call": c["raw"]}
        lines.append("tool_call: " + json.dumps(shown, ensure_ascii=False))
    return "\n".join(lines)
