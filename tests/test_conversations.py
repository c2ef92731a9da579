"""The chat shapes public data comes in, normalised once (data/conversations.py), and the bad rows
each refused with the row and the turn; then end to end through prep with a built-in format."""
import json

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import ChatConfig
from tunesmith.data.examples import detect_format, normalize
from tunesmith.data.tool_text import read_answer
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE

CALL_STR = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
CALL_OBJ = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def chat(row, **kw):
    return normalize(row, detect_format(row), 7, ChatConfig(**kw))


def test_openai_parts_and_null_content():
    ex = chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                            {"role": "assistant", "content": [{"type": "text", "text": "c"}]}]})
    assert [m["content"] for m in ex["messages"]] == ["a\nb", "c"]


def test_image_part_is_refused_by_name():
    with pytest.raises(DataError, match=r"row 7: messages\[0\]\.content\[1\] is a 'image_url' part: only text"):
        chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                         {"type": "image_url", "image_url": {"url": "x"}}]},
                           {"role": "assistant", "content": "c"}]})


def test_sharegpt_with_mapped_and_llama_factory_roles():
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                             {"from": "function_call", "value": json.dumps({"name": "f", "arguments": {"x": 1}})},
                             {"from": "observation", "value": "r"}, {"from": "narrator", "value": "a"}]}
    with pytest.raises(DataError, match="(?s)is from 'narrator'.*data.chat.roles"):
        chat(row)
    ex = chat(row, roles={"narrator": "assistant"})
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex["messages"][2]["tool_calls"] == [{"id": None, "name": "f", "arguments": {"x": 1}}]
    assert ex["messages"][3]["name"] == "f"  # the result's function, from its call


def test_arguments_as_string_or_object_normalise_to_one_form():
    rows = [{"messages": [{"role": "user", "content": "w"}, {"role": "assistant", "content": None, "tool_calls": [c]},
                          {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "assistant", "content": "ok"}]}
            for c in (CALL_STR, CALL_OBJ)]
    a, b = (chat(r)["messages"] for r in rows)
    assert a == b and a[1]["tool_calls"] == [{"id": "c1", "name": "get_weather", "arguments": {"city": "Paris"}}]
    assert a[2] == {"role": "tool", "content": "18C", "tool_call_id": "c1", "name": "get_weather"}


def test_reasoning_from_field_or_think_block():
    a = chat({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"}]})
    b = chat({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]})
    assert a["messages"][1] == b["messages"][1] == {"role": "assistant", "content": "A", "reasoning": "R"}
    dropped = chat({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A",
                                                                      "reasoning_content": "R"}]}, reasoning="drop")
    assert "reasoning" not in dropped["messages"][1]


@pytest.mark.parametrize("messages,message", [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                         "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     r"messages\[1\]\.tool_calls\[0\]\.function\.arguments is not valid JSON"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}],
     r"messages\[2\]: a tool result with no tool call before it"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
     r"messages\[1\]: an assistant turn with neither content nor tool calls"),
    ([{"role": "assistant", "content": "a"}], r"messages\[0\]: role 'assistant' cannot come at the start"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}],
     r"messages\[1\]\.tool_calls\[0\] needs a function name"),
])
def test_bad_rows_name_the_row_and_turn(messages, message):
    with pytest.raises(DataError, match="row 7: " + message):
        chat({"messages": messages})


def test_tools_column_or_config(tok_dir):
    from tunesmith.config.schema import DataConfig
    from tunesmith.data.render import make_renderer
    from tunesmith.errors import ConfigError

    tools = [{"name": "f", "parameters": {}}]
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert chat({**row, "tools": json.dumps(tools)})["tools"] == [{"type": "function", "function": tools[0]}]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    renderer = make_renderer(DataConfig(prompt_format="chatml", chat=ChatConfig(tools=tools)), tok)
    assert renderer.example(row)["tools"] == [{"type": "function", "function": tools[0]}]  # normalised once, for every row
    with pytest.raises(ConfigError, match=r"data.chat.tools: tools\[0\] needs a function name"):
        make_renderer(DataConfig(prompt_format="chatml", chat=ChatConfig(tools=[{"description": "no name"}])), tok)


def test_nulls_from_arrow_structs_read_as_absent():
    """Parquet/Arrow rows carry every key of a struct column, absent ones as null."""
    call = {"id": None, "type": None, "function": {"name": "f", "arguments": {"city": "Paris", "query": None},
                                                    "parameters": None}}
    row = {"messages": [{"role": "user", "content": "q", "tool_calls": None, "reasoning_content": None, "name": None},
                        {"role": "assistant", "content": None, "tool_calls": [call], "reasoning_content": None},
                        {"role": "tool", "content": "r", "tool_call_id": None, "name": None},
                        {"role": "assistant", "content": [{"type": None, "text": "done"}], "tool_calls": None}]}
    messages = chat(row)["messages"]
    assert messages[1]["tool_calls"] == [{"id": None, "name": "f", "arguments": {"city": "Paris"}}]
    assert messages[2] == {"role": "tool", "content": "r", "name": "f"} and messages[3]["content"] == "done"


def test_a_json_answer_is_not_a_tool_call_without_arguments():
    assert read_answer('{"name": "Alice", "age": 30}')["tool_calls"] == []
    assert read_answer("Sure.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\nDone.")["content"] == "Sure.\n\nDone."


def test_read_answer_shapes():
    hermes = read_answer('<think>\nhmm\n</think>\n\nLet me check.\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>')
    assert hermes == {"content": "Let me check.", "reasoning": "hmm", "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}
    assert read_answer('{"name": "f", "parameters": {"x": 1}}')["tool_calls"] == [{"name": "f", "arguments": {"x": 1}}]
    assert read_answer('[TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}]')["tool_calls"][0]["name"] == "f"
    assert read_answer("<tool_call>\n{broken\n</tool_call>")["tool_calls"] == [{"name": None, "raw": "{broken"}]
    assert read_answer("just text") == {"content": "just text", "reasoning": None, "tool_calls": []}


def test_prep_mixed_tool_rows_with_chatml(tmp_path, tok_dir):
    """Rows with and without tool calls, arguments as strings and objects, in one JSONL file:
    loaded, rendered with chatml's tool tags, trained exactly on the assistant turns."""
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [CALL_STR]},
                          {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]},
            {"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "", "tool_calls": [CALL_OBJ]},
                          {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]}]
    write_jsonl(tmp_path / "t.jsonl", rows)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]))
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "output_dir": str(tmp_path / "out"),
                                            "data": {"train": {"data_files": "t.jsonl"}, "prompt_format": "chatml",
                                                     "chat": {"tools": "tools.json"}}})
    assert main(["prep", str(cfg)]) == 0
    ds = load_from_disk(str(tmp_path / "out" / "data"))["train"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = [tok.decode([i for i, lab in zip(r["input_ids"], r["labels"]) if lab != IGNORE]) for r in ds]
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
    assert texts[1] == texts[2] == call + "It is 18C.<|im_end|></s>"
    assert "<tools>" in ds[1]["full_text"] and "<tool_response>\n18C\n</tool_response>" in ds[1]["full_text"]
    assert "18C\n</tool_response>" not in texts[1]


def test_parts_are_marked_apart():
    from tunesmith.data.tool_text import parts_of

    text = "<think>\nr\n</think>\n\nok\n<tool_call>\n{}\n</tool_call><|im_end|>\n<tool_response>\n18C\n</tool_response>"
    kinds = [k for _, k in parts_of(text)]
    assert kinds == ["reasoning", None, "tool_call", None, "tool_result"]
    assert "".join(p for p, _ in parts_of(text)) == text


def test_preview_shows_tool_rows_with_trained_calls(tmp_path, tok_dir, capsys):
    rows = [{"messages": [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [CALL_STR]},
                          {"role": "tool", "tool_call_id": "c1", "content": "18C"}, {"role": "assistant", "content": "It is 18C."}]}]
    write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "data": {"train": {"data_files": "t.jsonl"},
                                                                                 "prompt_format": "chatml"}})
    assert main(["preview", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert '\u27e6<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\u27e7' in out
    assert "<tool_response>\n18C\n</tool_response>" in out and "\u27e618C" not in out


def test_generate_prints_tool_calls_and_reasoning_apart():
    from tunesmith.infer.generate import answer_record

    assert answer_record("plain") == {"answer": "plain"}
    text = '<think>\nr\n</think>\n\n<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert answer_record(text) == {"answer": text, "content": "", "reasoning": "r",
                                   "tool_calls": [{"name": "f", "arguments": {"x": 1}}]}


def test_agent_example_prepares_with_every_call_trained(tmp_path, tok_dir):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "agent" / "agent.yaml"
    assert main(["prep", str(example), f"base_model={tok_dir}", f"output_dir={tmp_path}",
                 "data.max_length=8192"]) == 0  # the tiny test tokenizer spends more tokens per word
    ds = load_from_disk(str(tmp_path / "data"))["train"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    source = [json.loads(line) for line in (example.parent / "train.jsonl").read_text().splitlines()]
    assert len(ds) == len(source) == 30
    for row, conversation in zip(ds, source):
        trained = tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])
        for m in conversation["messages"]:
            for call in m.get("tool_calls") or []:
                assert f'<tool_call>\n{{"name": "{call["function"]["name"]}", "arguments": ' in trained
            if m["role"] in ("user", "tool", "system"):
                assert m["content"] not in trained


def test_chat_prints_a_tool_call_and_takes_the_next_line_as_its_result(tmp_path, tiny_llama, monkeypatch):
    """`tunesmith chat --tools`: a tool call is shown as parsed JSON, the next typed line becomes the
    tool's result (a `tool` turn with the call's name and id) and the model answers from it; the
    prompt the model sees holds the tools, the call and the result as training renders them."""
    import io

    from tunesmith.config.schema import ChatConfig, Config, DataConfig
    from tunesmith.infer import chat as chat_module

    answers = iter(['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
                    "<think>\ncold\n</think>\n\nIt is -3C in Oslo."])
    seen = []

    def fake_generate(model, tokenizer, renderer, rows, max_new_tokens=64):
        seen.append(tokenizer.decode(renderer.prompt(rows[0], 0)[0]))
        return [next(answers)]

    monkeypatch.setattr(chat_module, "generate", fake_generate)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    cfg = Config(base_model=str(tiny_llama), data=DataConfig(prompt_format="chatml", chat=ChatConfig(tools=tools)))
    out = io.StringIO()
    history = chat_module.chat(cfg, None, 8, io.StringIO('Weather in Oslo?\n{"temp_c": -3}\n'), out)
    assert out.getvalue().splitlines() == ['tool_call: {"name": "get_weather", "arguments": {"city": "Oslo"}}',
                                           "thinking: cold", "It is -3C in Oslo."]
    assert history[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert history[2] == {"role": "tool", "content": '{"temp_c": -3}', "name": "get_weather",
                          "tool_call_id": history[1]["tool_calls"][0]["id"]}
    assert "<tools>" in seen[0] and '"get_weather"' in seen[0]
    assert '<tool_response>\n{"temp_c": -3}\n</tool_response>' in seen[1] and seen[1].endswith("<|im_start|>assistant\n")


def test_a_prompt_never_holds_a_stand_in_reasoning(tok_dir):
    """thinking: on prompts stop before the reasoning only where reasoning was trained; with it
    masked the model was never taught to write one, and the prompt has no stand-in block."""
    from tunesmith.config.schema import DataConfig
    from tunesmith.data.render import make_renderer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    row = {"messages": [{"role": "user", "content": "q"}]}
    for reasoning in ("train", "mask"):
        r = make_renderer(DataConfig(prompt_format="chatml", chat=ChatConfig(reasoning=reasoning, thinking="on")), tok)
        text = tok.decode(r.prompt(row)[0])
        assert "\x00" not in text and "<think>" not in text and text.endswith("<|im_start|>assistant\n")


def test_chat_answers_once_every_call_has_its_result(tmp_path, tiny_llama, monkeypatch):
    import io

    from tunesmith.config.schema import Config, DataConfig
    from tunesmith.infer import chat as chat_module

    two_calls = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
                 '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Europe/Oslo"}}\n</tool_call>')
    answers, asked = iter([two_calls, "Cold, and it is noon."]), []

    def fake_generate(model, tokenizer, renderer, rows, max_new_tokens=64):
        asked.append(rows[0]["messages"])
        return [next(answers)]

    monkeypatch.setattr(chat_module, "generate", fake_generate)
    cfg = Config(base_model=str(tiny_llama), data=DataConfig(prompt_format="chatml"))
    history = chat_module.chat(cfg, None, 8, io.StringIO("Weather and time in Oslo?\n-3C\n12:00\n"), io.StringIO())
    assert len(asked) == 2  # not after the first result
    assert [(m["role"], m.get("name")) for m in history[2:4]] == [("tool", "get_weather"), ("tool", "get_time")]
    assert [m["tool_call_id"] for m in history[2:4]] == [c["id"] for c in history[1]["tool_calls"]]
    assert history[-1] == {"role": "assistant", "content": "Cold, and it is noon."}
