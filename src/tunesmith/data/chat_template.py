"""Render turns with the tokenizer's own chat template, so training and inference see the same text.

Assistant spans are found by rendering growing prefixes of the conversation: the text an
assistant turn adds after the generation prompt is what the model must learn to write.
This needs a template whose earlier output does not change when turns are added; templates
that rewrite history (some reasoning models drop old thoughts) are refused with a clear error.
"""
from __future__ import annotations

from tunesmith.data.prompts import Segment, add_segment
from tunesmith.errors import ConfigError, DataError


def check_has_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.prompt_format: chat_template was asked for, but the tokenizer has no chat template",
                          "pick a built-in format (chatml, llama2, ...) or use a tokenizer that ships a template")


def render_with_template(turns: list[dict], tokenizer, train_on_prompt: bool = False, index: int = -1) -> list[Segment]:
    segments: list[Segment] = []
    messages: list[dict[str, str]] = []
    done = ""  # text already placed in segments
    for t in turns:
        content = "\n\n".join([*t.get("contexts", []), t["content"]]) if t["role"] != "assistant" else t["cue"] + t["content"]
        if t["role"] == "assistant":
            prompt = _apply(tokenizer, messages, generation_prompt=True)
            messages.append({"role": "assistant", "content": content})
            full = _apply(tokenizer, messages, generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt) and full[len(prompt):].startswith(t["cue"])):
                raise DataError(f"row {index}: the tokenizer's chat template renders earlier turns differently "
                                "once later turns are added, so assistant turns cannot be located exactly",
                                "use a built-in prompt_format (e.g. chatml) for this model")
            add_segment(segments, prompt[len(done):] + t["cue"], train_on_prompt)
            add_segment(segments, full[len(prompt) + len(t["cue"]):], t["trained"] or train_on_prompt)
            done = full
        else:
            messages.append({"role": t["role"], "content": content})
    return segments


def _apply(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
