"""Render turns with the tokenizer's own chat template, so training and inference see the same text.

Assistant spans are found by rendering growing prefixes of the conversation: for assistant turn
k, the template's generation prompt for turns[:k] ends where the model starts writing, and the
rendering of turns[:k+1] adds what it must write (content, tool calls, the end-of-turn token).

Templates that rewrite history (Qwen3 drops earlier turns' reasoning, and writes an empty
<think></think> only in the last turn) are detected per row from their own output: such a row
becomes one example per trained assistant turn, each rendered exactly as inference renders it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from tunesmith.data.prompts import Segment, add_segment
from tunesmith.errors import ConfigError, DataError, row_error

SENTINEL = "zqxj"  # a name no real conversation uses, to see what a template renders
_EMPTY_THINK = re.compile(r"^\s*<think>\s*</think>\s*")
_THINK_END = re.compile(r"\s*</think>\s*")


def check_has_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.prompt_format: chat_template was asked for, but the tokenizer has no chat template",
                          "pick a built-in format (chatml, llama2, ...) or use a tokenizer that ships a template")


@dataclass
class Template:
    """A tokenizer's chat template and what it can render, probed once from its own output."""

    tokenizer: object

    def apply(self, messages: list[dict], generation_prompt: bool, tools: list | None = None, thinking: bool | None = None,
              index: int = -1) -> str:
        kwargs = {"enable_thinking": thinking} if thinking is not None and self.thinking_switch else {}
        try:
            return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                      add_generation_prompt=generation_prompt, **kwargs)
        except Exception as e:  # jinja's TemplateError (the template's raise_exception), TypeError, ...
            raise row_error(index, f"the tokenizer's chat template refused this conversation: {e}",
                            "fix the row to suit the template (e.g. no system turn for Gemma), or pick a built-in "
                            "prompt_format") from None

    def _probe(self, messages: list[dict], tools: list | None = None) -> str:
        try:
            return self.apply(messages, False, tools)
        except DataError:
            return ""

    @cached_property
    def renders_tool_calls(self) -> bool:
        call = {"id": "abcdefghi", "name": SENTINEL + "fn", "arguments": {SENTINEL + "arg": 1}}
        text = self._probe([{"role": "user", "content": "a"}, to_template({"role": "assistant", "content": "", "tool_calls": [call]})])
        return SENTINEL + "fn" in text and SENTINEL + "arg" in text

    @cached_property
    def renders_tools(self) -> bool:
        tools = [{"type": "function", "function": {"name": SENTINEL + "tool", "description": "d", "parameters": {}}}]
        return SENTINEL + "tool" in self._probe([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], tools)

    @cached_property
    def renders_reasoning(self) -> bool:
        text = self._probe([{"role": "user", "content": "a"},
                            {"role": "assistant", "content": "b", "reasoning_content": SENTINEL + "thought"}])
        return SENTINEL + "thought" in text

    @cached_property
    def thinking_switch(self) -> bool:
        return "enable_thinking" in (self.tokenizer.chat_template or "")

    @cached_property
    def end_of_turn(self) -> str:
        """The special token the template closes an assistant turn with ('' when it uses none)."""
        text = self._probe([{"role": "user", "content": "a"}, {"role": "assistant", "content": SENTINEL}])
        tail = text[text.rfind(SENTINEL) + len(SENTINEL):].strip() if SENTINEL in text else ""
        return tail if tail in special_tokens(self.tokenizer) else ""


def special_tokens(tokenizer) -> set[str]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {str(t) for t in tokenizer.all_special_tokens} | {t.content for t in added.values() if t.special}


def to_template(turn: dict) -> dict:
    """A normalised turn -> the message dict chat templates read (arguments as objects: `tojson`
    writes them once)."""
    msg = {"role": turn["role"], "content": turn["content"]}
    if turn.get("tool_calls"):
        msg["tool_calls"] = [{**({"id": c["id"]} if c.get("id") else {}), "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}} for c in turn["tool_calls"]]
    if turn.get("reasoning"):
        msg["reasoning_content"] = turn["reasoning"]
    for key in ("tool_call_id", "name"):
        if turn.get(key):
            msg[key] = turn[key]
    return msg


def template_messages(turns: list[dict], template: Template, tools: list | None, index: int) -> list[dict]:
    """Turns -> template messages; refuses what the template would silently leave out."""
    out = []
    for t in turns:
        content = "\n\n".join([*t.get("contexts", []), t["content"]]) if t["role"] != "assistant" else t["cue"] + t["content"]
        turn = {**t, "content": content}
        if t.get("tool_calls") and not template.renders_tool_calls:
            raise row_error(index, "has tool calls, but the tokenizer's chat template does not render tool calls",
                            "use prompt_format: chatml (tunesmith writes <tool_call> blocks) or a model whose template has tools")
        if t.get("reasoning") and not template.renders_reasoning:  # the DeepSeek-R1 distills' convention
            turn = {**turn, "content": f"<think>\n{t['reasoning']}\n</think>\n\n{content}", "reasoning": None}
        out.append(to_template(turn))
    if tools and not template.renders_tools:
        raise row_error(index, "has tools, but the tokenizer's chat template does not render tool schemas",
                        "use prompt_format: chatml (tunesmith lists the tools in the system turn) or a model whose template has tools")
    return out


def render_with_template(turns: list[dict], template: Template, tools: list | None = None, empty_think: str = "mask",
                         reasoning: str = "train", train_on_prompt: bool = False, index: int = -1) -> list[list[Segment]]:
    """Turns -> one example's segments, or one example per trained assistant turn for a template
    that renders earlier turns differently once later ones are added."""
    messages = template_messages(turns, template, tools, index)
    assistant = [k for k, t in enumerate(turns) if t["role"] == "assistant"]
    rendered: dict[int, tuple[str, str]] = {}

    def turn(k: int) -> tuple[str, str]:  # each turn rendered once, for either layout below
        if k not in rendered:
            rendered[k] = _turn(messages, k, turns[k], template, tools, empty_think, index)
        return rendered[k]

    segments: list[Segment] = []
    done = ""  # text already placed in segments
    for k in assistant:
        prompt, span = turn(k)
        if not prompt.startswith(done):
            break  # history rewritten: one example per turn, below
        add_segment(segments, prompt[len(done):], train_on_prompt)
        _add_span(segments, span, turns[k], template, reasoning, train_on_prompt, index)
        done = prompt + span
    else:
        return [segments]
    examples = []
    for k in assistant:
        if turns[k]["trained"]:
            prompt, span = turn(k)
            example: list[Segment] = []
            add_segment(example, prompt, train_on_prompt)
            _add_span(example, span, turns[k], template, reasoning, train_on_prompt, index)
            examples.append(example)
    return examples


def _turn(messages: list[dict], k: int, turn: dict, template: Template, tools, empty_think: str, index: int) -> tuple[str, str]:
    """(the generation prompt before assistant turn k, the text the turn adds)."""
    full = template.apply(messages[:k + 1], False, tools, index=index)
    prompt = template.apply(messages[:k], True, tools, index=index)
    if empty_think == "mask" and not turn.get("reasoning") and template.thinking_switch:
        # The template's non-thinking prompt writes the empty <think></think> block itself.
        quiet = template.apply(messages[:k], True, tools, thinking=False, index=index)
        if full.startswith(quiet):
            prompt = quiet
    if not full.startswith(prompt):
        full = _as_prompted(messages, k, prompt, full, template, tools, index)
    if not full.startswith(prompt) or not full[len(prompt):].startswith(turn["cue"]):
        raise row_error(index, "the tokenizer's chat template writes the conversation differently from its own generation "
                               "prompt, so the assistant turn cannot be located exactly",
                        "use a built-in prompt_format (e.g. chatml) for this model")
    span = full[len(prompt):]
    if empty_think == "mask" and not turn.get("reasoning") and (found := _EMPTY_THINK.match(span)):
        prompt, span = prompt + span[:found.end()], span[found.end():]  # templates without a switch
    return prompt + turn["cue"], span[len(turn["cue"]):]


def _as_prompted(messages: list[dict], k: int, prompt: str, full: str, template: Template, tools, index: int) -> str:
    """Turn k as inference meets it, for a template whose generation prompt differs from its
    finished conversation (Mistral writes the system message into the last user turn only while
    that turn is last): the generation prompt, then the turn's text as the finished form writes it,
    found from where a stand-in content starts. Used only when both forms end the same way after
    the last user-side text, so nothing between the prompt and the answer is lost."""
    plain = not messages[k].get("tool_calls") and not messages[k].get("reasoning_content")
    stand_in = template.apply([*messages[:k], {**messages[k], "content": SENTINEL}], False, tools, index=index) if plain else ""
    before = stand_in[:stand_in.find(SENTINEL)] if SENTINEL in stand_in else ""
    last = next((m["content"] for m in reversed(messages[:k]) if m["role"] != "assistant" and m["content"]), "")
    if not before or not last or not full.startswith(before) or last not in before or last not in prompt:
        return full
    if before[before.rfind(last):] != prompt[prompt.rfind(last):]:
        return full
    return prompt + full[len(before):]


def _add_span(segments: list[Segment], span: str, turn: dict, template: Template, reasoning: str,
              train_on_prompt: bool, index: int) -> None:
    """The turn's text: trained (its reasoning masked with reasoning: mask), with the whitespace a
    template writes after its end-of-turn token left to the next prompt."""
    trained = turn["trained"] or train_on_prompt
    thought = (turn.get("reasoning") or "").strip()
    at = span.find(thought) if thought else 0
    if at < 0:  # e.g. a template that keeps only the text after </think>: never trained silently without it
        raise row_error(index, "the chat template leaves out the reasoning of an assistant turn",
                        "set data.chat.reasoning: drop to train the answers without it, or use a template that writes it")
    if reasoning == "mask" and thought:
        end = at + len(thought)
        close = _THINK_END.match(span, end)
        end = close.end() if close else end
        add_segment(segments, span[:end], train_on_prompt)
        span = span[end:]
    body = span.rstrip()
    if template.end_of_turn and body.endswith(template.end_of_turn):
        add_segment(segments, body, trained)
        add_segment(segments, span[len(body):], train_on_prompt)
    else:
        add_segment(segments, span, trained)
