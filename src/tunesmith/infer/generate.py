"""Generate with the training template: the prompt's token ids come from the render and tokenize
path of training rows (data/render.py), so the model sees at inference exactly what it learned
from. Stops at EOS and at the format's stop strings; batched, left-padded."""
from __future__ import annotations

from tunesmith.config.schema import Config
from tunesmith.data.render import Renderer, make_renderer
from tunesmith.infer.batching import generate_ids

PLAIN = "_plain_text"  # marks a prompt read as plain text (no preprocessing function)


def generate(model, tokenizer, renderer: Renderer, rows: list[dict], max_new_tokens: int = 64,
             batch_size: int = 16, show_progress: bool = False, **gen_kwargs) -> list[str]:
    """Greedy by default, batched by prompt length; the answers in the rows' order, stop strings removed."""
    prompts = [renderer.prompt(r, i)[0] for i, r in enumerate(rows)]
    return decode_answers(tokenizer, generate_ids(model, tokenizer, prompts, renderer.stop_strings, max_new_tokens,
                                                  batch_size, show_progress, renderer.stop_ids, **gen_kwargs),
                          renderer.stop_strings)


def decode_answers(tokenizer, answers: list[list[int]], stop_strings: list[str]) -> list[str]:
    return [cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop_strings) for ids in answers]


def cut_at_stop(text: str, stops: list[str]) -> str:
    for s in stops:
        if s in text:
            text = text[:text.index(s)]
    return text


def read_prompts(source: str) -> list[dict]:
    """One prompt per line: a JSON object (a row in any data format) or plain text (the user's input)."""
    import json
    import sys

    from tunesmith.errors import DataError

    lines = sys.stdin.read().splitlines() if source == "-" else open(source, encoding="utf-8").read().splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{source}: line {lineno} is not valid JSON: {e.msg}") from None
        else:
            rows.append({"prompt": line.replace("\\n", "\n"), PLAIN: True})
    return rows


def run_generate(cfg: Config | None, model_path: str | None, prompts: str, max_new_tokens: int,
                 batch_size: int = 16) -> list[str]:
    """JSON rows go through the data step's preprocessing; plain lines are already prompts. All
    prompts are generated together, batched by length; answers are printed in the input's order.
    `cfg` None: the prompt settings saved with `model_path`."""
    import json

    from tunesmith.infer.load import load_for_inference
    from tunesmith.infer.settings import inference_config

    cfg = inference_config(cfg, model_path, "generate")
    rows = read_prompts(prompts)
    model, tokenizer = load_for_inference(cfg, model_path)
    # The preprocessing function is loaded only when a JSON row needs it.
    needs_preprocessing = any(not row.get(PLAIN) for row in rows)
    renderer = make_renderer(cfg.data, tokenizer, needs_preprocessing, cfg.user_key("data.preprocessing_fn"))
    typed = renderer.without_preprocessing()
    ids = []
    for i, row in enumerate(rows):
        if row.pop(PLAIN, False):
            ids.append(typed.prompt(typed.typed_row(row["prompt"]), i)[0])
        else:
            ids.append(renderer.prompt(row, i)[0])
    stop = renderer.stop_strings
    answers = decode_answers(tokenizer, generate_ids(model, tokenizer, ids, stop, max_new_tokens, batch_size,
                                                     show_progress=len(ids) > 1, stop_ids=renderer.stop_ids), stop)
    for answer in answers:
        print(json.dumps(answer_record(answer), ensure_ascii=False))
    return answers


def answer_record(answer: str) -> dict:
    """The printed line: the answer's text, plus its tool calls (parsed JSON) and its reasoning,
    apart, when it has them."""
    from tunesmith.data.tool_text import read_answer

    parsed = read_answer(answer)
    record = {"answer": answer}
    if parsed["tool_calls"] or parsed["reasoning"]:
        record["content"] = parsed["content"]
        if parsed["reasoning"]:
            record["reasoning"] = parsed["reasoning"]
        if parsed["tool_calls"]:
            record["tool_calls"] = parsed["tool_calls"]
    return record
