"""The Ollama Modelfile's TEMPLATE, rendered by Go's text/template as Ollama renders a chat, writes
multi-turn conversations exactly as training rendered them, for the built-in formats, with and
without a system message (a chat's own, or the Modelfile's SYSTEM); its stop strings end an
answer where training ended it."""
import pytest
from transformers import AutoTokenizer

from ollama_go import render_ollama
from tunesmith.config.schema import Config, DataConfig, PromptConfig
from tunesmith.data.render import make_renderer
from tunesmith.ship.ollama import modelfile_template, stop_strings

CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6."},
        {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You're welcome."}]


@pytest.mark.parametrize("fmt", ["chatml", "llama2", "alpaca", "user_assistant", "vicuna"])
@pytest.mark.parametrize("system, configured", [(None, None), ("Be brief.", None), (None, "You are terse.")])
def test_modelfile_renders_multi_turn_chats_as_training(tok_dir, fmt, system, configured):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = Config(base_model=str(tok_dir), data=DataConfig(prompt_format=fmt, prompt=PromptConfig(system_message=configured)))
    messages = ([{"role": "system", "content": system}] if system else []) + CHAT
    [segments], _ = make_renderer(cfg.data, tok).render({"messages": messages}, 0, "chat")
    trained = "".join(t for t, _ in segments)
    template, closing = modelfile_template(cfg, tok)
    assert render_ollama(template, configured, messages) == trained
    # each generation prompt (the chat up to a user turn) is the training text up to that answer
    for turns in (1, 3, 5):
        prompt = render_ollama(template, configured, messages[:len(messages) - len(CHAT) + turns])
        answer = CHAT[turns]["content"]
        assert trained.startswith(prompt + answer), (prompt, trained)
        after, stops = trained[len(prompt) + len(answer):], stop_strings(cfg, tok, closing)
        if not after.strip():  # the last answer: training ends it with EOS
            assert tok.eos_token in stops
            continue
        found = [s for s in stops if s in after]  # the first thing after the answer is a stop string
        assert found and min(after.index(s) for s in found) <= len(after) - len(after.lstrip()), (after, stops)
