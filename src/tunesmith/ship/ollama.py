"""An Ollama Modelfile whose TEMPLATE writes exactly the prompt the model was trained on.

The template is not guessed from the format's name: the training render path itself renders an
example whose system message, input and answer are sentinels, and the sentinels become Ollama's
`{{ .System }}`, `{{ .Prompt }}` and `{{ .Response }}`. Whatever the format (built-in markers,
your own, the tokenizer's chat template, few-shot examples, input templates), Ollama sends the
model the same text training did.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.errors import ConfigError
from tunesmith.data.render import make_renderer

SYSTEM, PROMPT, ANSWER = "\x00system\x00", "\x00prompt\x00", "\x00answer-text\x00"


def prompt_parts(cfg: Config, tokenizer, system: str | None) -> tuple[str, str]:
    """(text before the answer, text after it) for one example rendered as in training."""
    prompt = cfg.data.prompt.model_copy(update={"system_message": system})
    renderer = make_renderer(cfg.data.model_copy(update={"prompt": prompt}), tokenizer, preprocessing=False)
    segments = renderer.segments({"kind": "input", "input": PROMPT, "contexts": [], "response": ANSWER})
    text = "".join(t for t, _ in segments)
    before, found, after = text.partition(ANSWER)
    if not found or PROMPT not in before:
        raise ConfigError("ollama export: the prompt format does not place the input and answer verbatim",
                          "write a Modelfile TEMPLATE by hand for this format")
    if renderer.specials.adds_bos and before.startswith(renderer.specials.bos_text):
        before = before[len(renderer.specials.bos_text):]  # llama.cpp adds BOS itself (add_bos_token)
    return before, after


def modelfile_template(cfg: Config, tokenizer) -> tuple[str, str]:
    """(Go template, the answer's closing text)."""
    with_system, closing = prompt_parts(cfg, tokenizer, SYSTEM)
    without_system, _ = prompt_parts(cfg, tokenizer, None)
    go = {SYSTEM: "{{ .System }}", PROMPT: "{{ .Prompt }}"}

    def fill(text: str) -> str:
        if "{{" in text or '"""' in text:
            raise ConfigError("ollama export: the prompt format contains '{{' or '\"\"\"', which a Modelfile cannot quote",
                              "write a Modelfile TEMPLATE by hand for this format")
        for sentinel, field in go.items():
            text = text.replace(sentinel, field)
        return text

    if cfg.data.prompt.system_message:  # training always had this system message: no branch needed
        template = fill(with_system)
    else:
        template = "{{ if .System }}" + fill(with_system) + "{{ else }}" + fill(without_system) + "{{ end }}"
    return template + "{{ .Response }}" + fill(closing), closing


def stop_strings(cfg: Config, tokenizer, closing: str) -> list[str]:
    format_stops = make_renderer(cfg.data, tokenizer, preprocessing=False).stop_strings
    stops = [*format_stops, closing.strip(), tokenizer.eos_token or ""]
    return list(dict.fromkeys(s for s in stops if s))


def jinja_chat_template(cfg: Config, tokenizer) -> str:
    """A chat template (for the GGUF metadata, which llama.cpp's chat mode reads) that writes the
    training prompt: each user turn as the rendered prompt (system block on the first, as trained),
    each assistant turn as its answer and closing text. The answer cue comes with the user turn,
    so the generation prompt is in place either way."""
    with_system, closing = prompt_parts(cfg, tokenizer, SYSTEM)
    without_system, _ = prompt_parts(cfg, tokenizer, None)

    def expr(text: str, system: str = "") -> str:
        """`text` as Jinja string concatenation, sentinels replaced by the variables."""
        pieces = re.split(f"({re.escape(SYSTEM)}|{re.escape(PROMPT)})", text)
        names = {SYSTEM: system, PROMPT: "m['content']"}
        return " ~ ".join(names.get(p, json.dumps(p, ensure_ascii=False)) for p in pieces if p)

    default = json.dumps(cfg.data.prompt.system_message, ensure_ascii=False) if cfg.data.prompt.system_message else "none"
    return ("{% set ns = namespace(system=" + default + ") %}"
            "{% for m in messages %}"
            "{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}"
            "{% elif m['role'] == 'user' %}"
            "{% if ns.system is not none %}{{ " + expr(with_system, "ns.system") + " }}{% else %}{{ " + expr(without_system) + " }}{% endif %}"
            "{% set ns.system = none %}"
            "{% elif m['role'] == 'assistant' %}{{ m['content'] ~ " + json.dumps(closing, ensure_ascii=False) + " }}"
            "{% endif %}{% endfor %}")


def write_modelfile(cfg: Config, tokenizer, gguf_file: Path, target: Path) -> Path:
    template, closing = modelfile_template(cfg, tokenizer)
    lines = [f"FROM ./{gguf_file.name}", f'TEMPLATE """{template}"""']
    if cfg.data.prompt.system_message:
        lines.append(f'SYSTEM """{cfg.data.prompt.system_message}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stop_strings(cfg, tokenizer, closing)]  # quoted, \n escaped
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(target)
    return target
