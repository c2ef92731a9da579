"""Prompt and PromptFormat: render a normalized example to text segments (text, trained?).

Everything here is a pure function of the example, the Prompt, the PromptFormat and the
tokenizer's BOS/EOS text, so the mask can be checked without a model. Adjacent segments with
the same flag are merged: the only token boundaries we force are prompt|answer boundaries,
which is exactly where generation starts at inference.
"""
from __future__ import annotations

from typing import Any

from tunesmith.config.schema import PromptConfig, PromptFormatConfig
from tunesmith.data.tool_text import answer_content, reasoning_text, result_text, tools_text
from tunesmith.errors import ConfigError, DataError

Segment = tuple[str, bool]

BUILTIN_FORMATS: dict[str, PromptFormatConfig] = {
    "plain": PromptFormatConfig(name="plain", context_suffix="\n\n", turn_separator="\n\n"),
    "user_assistant": PromptFormatConfig(
        name="user_assistant", system_prefix="System: ", system_suffix="\n", input_prefix="User: ",
        input_suffix="\n", response_prefix="Assistant: ", turn_separator="\n", stop=["\nUser:"]),
    "alpaca": PromptFormatConfig(
        name="alpaca", system_suffix="\n\n", input_prefix="### Instruction:\n", context_prefix="\n\n### Input:\n",
        context_suffix="", context_position="after_input", input_suffix="\n\n", response_prefix="### Response:\n",
        turn_separator="\n\n", stop=["### Instruction:"]),
    "dolly": PromptFormatConfig(
        name="dolly", system_suffix="\n\n", input_prefix="### Instruction:\n", context_prefix="\n\nInput:\n",
        context_suffix="", context_position="after_input", input_suffix="\n\n", response_prefix="### Response:\n",
        response_suffix="\n\n### End", turn_separator="\n\n", stop=["### End"]),
    "vicuna": PromptFormatConfig(
        name="vicuna", system_suffix=" ", input_prefix="USER: ", input_suffix=" ", response_prefix="ASSISTANT: ",
        response_suffix="{eos}", stop=["USER:"]),
    "llama2": PromptFormatConfig(
        name="llama2", system_prefix="<<SYS>>\n", system_suffix="\n<</SYS>>\n\n", system_in_first_input=True,
        input_prefix="[INST] ", input_suffix=" [/INST]", response_prefix=" ", response_suffix=" {eos}",
        turn_separator="{bos}", stop=["[INST]"]),
    "chatml": PromptFormatConfig(
        name="chatml", system_prefix="<|im_start|>system\n", system_suffix="<|im_end|>\n",
        input_prefix="<|im_start|>user\n", input_suffix="<|im_end|>\n", response_prefix="<|im_start|>assistant\n",
        response_suffix="<|im_end|>", turn_separator="\n", stop=["<|im_end|>"]),
}
# The two-step workflow's own formats: its base PromptFormat (roles joined by newlines), RedPajama, Together's Llama-2.
BUILTIN_FORMATS["two_step"] = PromptFormatConfig(name="two_step", system_suffix="\n", context_suffix="\n", input_suffix="\n",
                                                 turn_separator="\n")
BUILTIN_FORMATS["redpajama"] = PromptFormatConfig(
    name="redpajama", system_suffix="\n", context_suffix="\n", input_prefix="<human>: ", input_suffix="\n",
    response_prefix="<bot>: ", turn_separator="\n", stop=["<human>:"])
BUILTIN_FORMATS["together_llama2"] = PromptFormatConfig(
    name="together_llama2", system_suffix="", system_in_first_input=True, context_suffix="\n", input_prefix="[INST]  ",
    input_suffix="  [/INST]\n\n", stop=["[INST]"])
CHAT_TEMPLATE = "chat_template"  # the tokenizer's own template (see chat_template.py)
BUILTIN_FORMATS["dolly_hhrlhf"] = BUILTIN_FORMATS["alpaca"]


def resolve_format(spec: str | PromptFormatConfig, bos: str, eos: str) -> PromptFormatConfig | str:
    """A built-in name or a custom format, with {bos}/{eos} replaced by the tokenizer's tokens."""
    if isinstance(spec, str):
        if spec == CHAT_TEMPLATE:
            return CHAT_TEMPLATE
        if spec not in BUILTIN_FORMATS:
            raise ConfigError(f"data.prompt_format: unknown format {spec!r}",
                              f"use one of {', '.join(sorted([*BUILTIN_FORMATS, CHAT_TEMPLATE]))} or a mapping of markers")
        spec = BUILTIN_FORMATS[spec]
    fill = {k: v.replace("{bos}", bos).replace("{eos}", eos) for k, v in spec.model_dump().items() if isinstance(v, str)}
    return spec.model_copy(update=fill)


def example_to_turns(example: dict[str, Any], prompt: PromptConfig) -> list[dict[str, Any]]:
    """Either example kind -> turns {role, content, cue, trained}; only assistant turns can be trained."""
    if example["kind"] == "chat":
        msgs = example["messages"]
        turns = [{**m, "cue": "", "trained": m["role"] == "assistant"} for m in msgs]
        if prompt.system_message and msgs[0]["role"] != "system":
            turns.insert(0, {"role": "system", "content": prompt.system_message, "cue": "", "trained": False})
        return turns
    turns = []
    if prompt.system_message:
        turns.append({"role": "system", "content": prompt.system_message, "cue": "", "trained": False})
    for shot in prompt.examples:  # few-shot examples are prompt: never trained
        contexts = [shot.context] if isinstance(shot.context, str) else (shot.context or [])
        turns += _qa_turns(shot.input, contexts, shot.response, prompt, trained=False)
    return turns + _qa_turns(example["input"], example["contexts"], example["response"], prompt, trained=True)


def _qa_turns(text: str, contexts: list[str], response: str, prompt: PromptConfig, trained: bool) -> list[dict]:
    cue, _, after = prompt.response_template.partition("{text}")
    if prompt.context_pair_template and contexts:
        contexts = [pair_contexts(contexts, prompt.context_pair_template)]
    return [
        {"role": "user", "content": prompt.input_template.format(text=text), "cue": "", "trained": False,
         "contexts": [prompt.context_template.format(text=c, index=i + 1) for i, c in enumerate(contexts)]},
        {"role": "assistant", "content": response + after, "cue": cue, "trained": trained},
    ]


def select_trained(turns: list[dict], assistant_turns: str) -> list[dict]:
    """`assistant_turns: last` keeps the trained flag on the last trainable turn only."""
    if assistant_turns == "all":
        return turns
    last = max(i for i, t in enumerate(turns) if t["trained"])
    return [{**t, "trained": t["trained"] and i == last} for i, t in enumerate(turns)]


def render_turns(turns: list[dict], fmt: PromptFormatConfig, train_on_prompt: bool = False,
                 tools: list[dict] | None = None, reasoning: str = "train") -> list[Segment]:
    """Turns -> merged segments using a PromptFormat's markers. Markers and prompts are masked
    unless `train_on_prompt`; an assistant turn's answer (its tool calls included) and its suffix
    carry the turn's flag, its reasoning too unless `reasoning: mask`. Tools, calls, results and
    reasoning are written as tool_text.py says."""
    p = train_on_prompt
    segments: list[Segment] = []
    system = ""
    if tools:
        listing = tools_text(tools)
        if turns and turns[0]["role"] == "system":
            turns = [{**turns[0], "content": turns[0]["content"] + "\n\n" + listing}, *turns[1:]]
        else:
            turns = [{"role": "system", "content": listing, "cue": "", "trained": False}, *turns]
    turns = _merge_tool_results(turns)
    if turns and turns[0]["role"] == "system":
        system = fmt.system_prefix + turns[0]["content"] + fmt.system_suffix
        turns = turns[1:]
        if not fmt.system_in_first_input:
            add_segment(segments, system, p)
            system = ""
    after_assistant = False
    for t in turns:
        if t["role"] == "assistant":
            add_segment(segments, fmt.response_prefix + t["cue"], p)
            if t.get("reasoning"):
                add_segment(segments, reasoning_text(t["reasoning"]), (t["trained"] and reasoning == "train") or p)
            add_segment(segments, answer_content(t) + fmt.response_suffix, t["trained"] or p)
            after_assistant = True
            continue
        if after_assistant:
            add_segment(segments, fmt.turn_separator, p)
            after_assistant = False
        contexts = "".join(fmt.context_prefix + c + fmt.context_suffix for c in t.get("contexts", []))
        body = contexts + t["content"] if fmt.context_position == "before_input" else t["content"] + contexts
        prefix = fmt.input_prefix + system
        system = ""
        add_segment(segments, prefix + body + fmt.input_suffix, p)
    return segments


def _merge_tool_results(turns: list[dict]) -> list[dict]:
    """Tool turns -> <tool_response> blocks; consecutive ones share one user-side turn."""
    out: list[dict] = []
    for t in turns:
        if t["role"] != "tool":
            out.append(t)
        elif out and out[-1].get("tool_results"):
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result_text(t["content"])}
        else:
            out.append({"role": "tool", "content": result_text(t["content"]), "cue": "", "trained": False, "tool_results": True})
    return out


def add_segment(segments: list[Segment], text: str, trained: bool) -> None:
    if not text:
        return
    if segments and segments[-1][1] == trained:
        segments[-1] = (segments[-1][0] + text, trained)
    else:
        segments.append((text, trained))


def pair_contexts(contexts: list[str], template: str) -> str:
    """Contexts read as (question, answer) pairs -> one context text (the earlier conversation)."""
    if len(contexts) % 2:
        raise DataError(f"contexts are read as question/answer pairs, but there are {len(contexts)} "
                        f"(the last, {contexts[-1][:60]!r}, has no answer)", "give an even number of contexts")
    pairs = zip(contexts[::2], contexts[1::2])
    return "\n".join(template.format(question=q.strip(), answer=a.strip()) for q, a in pairs)
