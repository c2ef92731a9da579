"""`tunesmith chat`: talk to a model in the terminal, rendered exactly as in training."""
from __future__ import annotations

import sys
from typing import TextIO

from tunesmith.config.schema import Config
from tunesmith.data.render import make_renderer
from tunesmith.infer.generate import generate
from tunesmith.infer.load import load_for_inference
from tunesmith.infer.settings import inference_config


def chat(cfg: Config | None, model_path: str | None, max_new_tokens: int = 256,
         stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> list[dict]:
    """Each line you type is a user turn; `/reset` clears the history, an empty line or EOF ends.
    `cfg` None: the prompt settings saved with `model_path`."""
    cfg = inference_config(cfg, model_path, "chat")
    model, tokenizer = load_for_inference(cfg, model_path)
    renderer = make_renderer(cfg.data, tokenizer, preprocessing=False)  # typed text is already a prompt
    messages: list[dict] = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        if line.strip() == "/reset":
            messages = []
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        answer = generate(model, tokenizer, renderer, [{"messages": list(messages)}], max_new_tokens=max_new_tokens)[0]
        messages.append({"role": "assistant", "content": answer})
        stdout.write(("model> " if interactive else "") + answer + "\n")
        stdout.flush()
    return messages
