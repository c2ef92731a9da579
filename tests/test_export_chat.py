"""The chat template written into an exported GGUF (llama.cpp's chat mode) writes multi-turn
conversations, tool calls, tool results and the tools list exactly as training rendered them,
character for character, for the built-in formats."""
import pytest
from transformers import AutoTokenizer

from tunesmith.config.schema import ChatConfig, Config, DataConfig
from tunesmith.data.render import make_renderer
from tunesmith.ship.ollama import jinja_chat_template

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
CONVERSATION = [
    {"role": "user", "content": "Weather and time in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}}]},
    {"role": "tool", "tool_call_id": "a", "name": "get_weather", "content": "18C"},
    {"role": "tool", "tool_call_id": "b", "name": "get_time", "content": "14:05"},
    {"role": "assistant", "content": "18C at 14:05."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


@pytest.mark.parametrize("fmt", ["chatml", "llama2", "alpaca", "user_assistant", "vicuna"])
@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("tools", [None, TOOLS])
def test_gguf_template_renders_conversations_as_training(tok_dir, fmt, system, tools):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = Config(base_model=str(tok_dir), data=DataConfig(prompt_format=fmt, chat=ChatConfig(tools=tools)))
    renderer = make_renderer(cfg.data, tok)
    messages = ([{"role": "system", "content": system}] if system else []) + CONVERSATION
    [segments], _ = renderer.render({"messages": messages}, 0, "chat")
    trained_text = "".join(t for t, _ in segments)
    tok.chat_template = jinja_chat_template(cfg, tok)
    assert tok.apply_chat_template(messages, tools=tools, tokenize=False) == trained_text
    # the generation prompt after the first turn is the training text up to the first answer
    prompt = tok.apply_chat_template(messages[:-6], tools=tools, tokenize=False, add_generation_prompt=True)
    assert trained_text.startswith(prompt) and "<tool_call>" in trained_text[len(prompt):len(prompt) + 40]
