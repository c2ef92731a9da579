"""An Ollama Modelfile whose TEMPLATE writes exactly the conversation the model was trained on.

The template is not guessed from the format's name: the training render path itself renders an
example whose system message, input and answer are sentinels, and the sentinels become the Go
template's system text, message content and answer. Whatever the format (built-in markers, your
own, the tokenizer's chat template, few-shot examples, input templates), Ollama sends the model
the same text training did, for every turn of a chat (tests/test_ollama_template.py renders it
with Go's text/template, the engine Ollama uses).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.errors import ConfigError
from tunesmith.data.render import make_renderer
from tunesmith.data.tokenize import specials_of
from tunesmith.data.tool_text import reasoning_text, result_text, tools_text

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
    """(Go template over Ollama's `.Messages`, the answer's closing text). Written like the GGUF's
    chat template (jinja_chat_template): each user turn as the rendered prompt, the system block
    on the first one (Ollama passes system messages, and the Modelfile's SYSTEM, as `.System`),
    each earlier answer with its closing text, and the format's turn separator between an answer
    and the next user turn. Ollama renders a `.Messages` template once over the whole chat; the
    older `.Prompt`/`.Response` form is repeated per turn without the separator."""
    with_system, closing = prompt_parts(cfg, tokenizer, SYSTEM)
    without_system, _ = prompt_parts(cfg, tokenizer, None)
    separator = turn_separator(cfg, tokenizer, without_system, closing)
    go = {SYSTEM: "{{ $system }}", PROMPT: "{{ .Content }}"}

    def fill(text: str) -> str:
        if "{{" in text or '"""' in text:
            raise ConfigError("ollama export: the prompt format contains '{{' or '\"\"\"', which a Modelfile cannot quote",
                              "write a Modelfile TEMPLATE by hand for this format")
        for sentinel, field in go.items():
            text = text.replace(sentinel, field)
        return text

    user = ("{{ if $after }}" + fill(separator) + "{{ end }}" if separator else "") + \
        "{{ if $system }}" + fill(with_system) + '{{ $system = "" }}{{ else }}' + fill(without_system) + "{{ end }}"
    template = ("{{ $system := .System }}{{ $after := false }}{{ range .Messages }}"
                '{{ if eq .Role "user" }}' + user +
                '{{ else if eq .Role "assistant" }}{{ .Content }}' + fill(closing) + "{{ $after = true }}"
                "{{ end }}{{ end }}")
    return template, closing


def stop_strings(cfg: Config, tokenizer, closing: str) -> list[str]:
    """The format's stop strings, the answer's closing text, EOS, and the opening of the next user
    turn (a model that runs past its answer in a chat starts writing the user's next turn)."""
    format_stops = make_renderer(cfg.data, tokenizer, preprocessing=False).stop_strings
    without_system, _ = prompt_parts(cfg, tokenizer, None)
    opening = (turn_separator(cfg, tokenizer, without_system, closing) + without_system.partition(PROMPT)[0]).strip()
    stops = [*format_stops, closing.strip(), tokenizer.eos_token or "", opening]
    return list(dict.fromkeys(s for s in stops if s))


def jinja_chat_template(cfg: Config, tokenizer) -> str:
    """A chat template (for the GGUF metadata, which llama.cpp's chat mode reads) that writes
    conversations as training did: each user turn as the rendered prompt (system block on the
    first, as trained), each assistant turn as its answer (tool calls as <tool_call> blocks) and
    closing text, the format's turn separator between an answer and the next user turn, tool
    results as <tool_response> blocks, tools listed in the system turn. The answer cue comes with
    the user turn, so the generation prompt is in place either way. A tokenizer that adds BOS gets
    `{{ bos_token }}` first, as its own templates write it: llama-cpp-python's chat mode adds no BOS
    of its own, llama.cpp's strips a leading one and adds it when tokenizing, and transformers'
    apply_chat_template tokenizes without adding one, so each sends the one BOS training had."""
    with_system, closing = prompt_parts(cfg, tokenizer, SYSTEM)
    without_system, _ = prompt_parts(cfg, tokenizer, None)
    separator = turn_separator(cfg, tokenizer, without_system, closing)

    def parts(text: str, system: str = "") -> tuple[str, str]:
        """The rendered prompt as Jinja (text before the input, text after it)."""
        head, _, tail = text.partition(PROMPT)
        pieces = [p for p in re.split(f"({re.escape(SYSTEM)})", head) if p]
        head = " ~ ".join(system if p == SYSTEM else json.dumps(p, ensure_ascii=False) for p in pieces) or '""'
        return head, json.dumps(tail, ensure_ascii=False)

    (sys_head, sys_tail), (head, tail) = parts(with_system, "ns.system"), parts(without_system)
    q = lambda text: json.dumps(text, ensure_ascii=False)  # noqa: E731
    default = q(cfg.data.prompt.system_message) if cfg.data.prompt.system_message else "none"
    listing_head, _, listing_tail = tools_text([{"\x00": 0}]).partition(json.dumps({"\x00": 0}))
    result_head, _, result_tail = result_text("\x00").partition("\x00")  # the tags training writes
    think_head, _, think_tail = reasoning_text("\x00").partition("\x00")
    bos = "{{ bos_token }}" if specials_of(tokenizer).adds_bos else ""
    return (bos + "{% set ns = namespace(system=" + default + ", after=false, listing='') %}"
            "{% if tools %}{% set ns.listing = " + q(listing_head) + " %}{% for t in tools %}"
            "{% set ns.listing = ns.listing ~ (t | tojson) ~ ('\\n' if not loop.last else '') %}{% endfor %}"
            "{% set ns.listing = ns.listing ~ " + q(listing_tail) + " %}"
            "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}{% endfor %}"
            "{% set ns.system = ns.listing if ns.system is none else ns.system ~ '\\n\\n' ~ ns.listing %}{% endif %}"
            "{% for m in messages %}"
            "{% if m['role'] == 'system' %}{% if not tools %}{% set ns.system = m['content'] %}{% endif %}"
            "{% elif m['role'] in ['user', 'tool'] %}"
            "{% set starts = loop.first or messages[loop.index0 - 1]['role'] != 'tool' or m['role'] == 'user' %}"
            "{% set ends = loop.last or messages[loop.index0 + 1]['role'] != 'tool' or m['role'] == 'user' %}"
            "{% if starts %}{% if ns.after %}{{ " + q(separator) + " }}{% endif %}{% set ns.after = false %}"
            "{% if ns.system is not none %}{{ " + sys_head + " }}{% else %}{{ " + head + " }}{% endif %}"
            "{% else %}{{ '\\n' }}{% endif %}"
            "{% if m['role'] == 'tool' %}{{ " + q(result_head) + " ~ m['content'] ~ " + q(result_tail) + " }}"
            "{% else %}{{ m['content'] }}{% endif %}"
            "{% if ends %}{% if ns.system is not none %}{{ " + sys_tail + " }}{% else %}{{ " + tail + " }}{% endif %}"
            "{% set ns.system = none %}{% endif %}"
            "{% elif m['role'] == 'assistant' %}"
            "{% if m['reasoning_content'] %}{{ " + q(think_head) + " ~ m['reasoning_content'] ~ " + q(think_tail) + " }}{% endif %}"
            "{{ m['content'] or '' }}"
            "{% for c in m['tool_calls'] or [] %}{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}"
            "{{ '<tool_call>\\n' ~ ({'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson)"
            " ~ '\\n</tool_call>' }}{% endfor %}"
            "{{ " + q(closing) + " }}{% set ns.after = true %}"
            "{% endif %}{% endfor %}")


def turn_separator(cfg: Config, tokenizer, without_system: str, closing: str) -> str:
    """What training writes between an answer's closing text and the next user turn (a two-turn
    chat rendered by the training path, read back); '' when the format's shape gives none."""
    renderer = make_renderer(cfg.data.model_copy(update={"prompt": cfg.data.prompt.model_copy(
        update={"system_message": None, "examples": [], "input_template": "{text}"})}), tokenizer, preprocessing=False)
    turns = [{"role": "user", "content": "\x00u1\x00"}, {"role": "assistant", "content": ANSWER},
             {"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    text = "".join(t for t, _ in renderer.segments({"kind": "chat", "messages": turns}))
    first = text.find(ANSWER + closing)
    second = text.find(without_system.partition(PROMPT)[0] + PROMPT, max(first, 0))
    return text[first + len(ANSWER + closing):second] if 0 <= first < second else ""


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
