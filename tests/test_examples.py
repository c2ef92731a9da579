import pytest

from tunesmith.data.examples import apply_preprocessing, detect_format, normalize, rename_columns
from tunesmith.errors import DataError


@pytest.mark.parametrize("cols,fmt", [
    (["input", "context", "response"], "input"), (["input", "contexts", "response"], "input"),
    (["prompt", "response"], "prompt_response"), (["prompt", "completion"], "prompt_response"),
    (["messages"], "chat"), (["question", "answer"], ""),
])
def test_detect_format(cols, fmt):
    assert detect_format(cols) == fmt


def test_two_step_row_with_context_string_or_list():
    assert normalize({"input": "q", "context": "c1", "response": "r"}, "input", 0)["contexts"] == ["c1"]
    assert normalize({"input": "q", "contexts": ["a", "b"], "response": "r"}, "input", 0)["contexts"] == ["a", "b"]
    assert normalize({"input": "q", "context": None, "response": "r"}, "input", 0)["contexts"] == []


def test_prompt_completion_maps_to_input_kind():
    ex = normalize({"prompt": "p", "completion": "c"}, "prompt_response", 3)
    assert ex == {"kind": "input", "input": "p", "contexts": [], "response": "c"}


def test_rename_columns():
    row = rename_columns({"question": "q", "answer": "a", "id": 1}, {"prompt": "question", "response": "answer"})
    assert row == {"id": 1, "prompt": "q", "response": "a"}


@pytest.mark.parametrize("row,fmt,needle", [
    ({"input": "q"}, "input", "row 7: missing required field 'response'"),
    ({"input": 3, "response": "r"}, "input", "row 7: field 'input' must be a string, got int"),
    ({"input": "q", "response": "  "}, "input", "row 7: field 'response' is empty"),
    ({"input": "q", "context": [1, 2], "response": "r"}, "input", "field 'context' must be a list of strings"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "chat", "role 'assistant' cannot come at the start"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "chat", "role 'user' cannot come after 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "chat", "system message may only come first"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "chat", "has role 'robot'"),
    ({"messages": [{"role": "user", "content": "a"}]}, "chat", "no assistant turn"),
    ({"messages": [{"content": "x"}]}, "chat", "must be an object with a string 'role'"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "b"}]}, "chat",
     "messages[0].content must be a string, null or a list of text parts"),
])
def test_bad_rows_name_the_row_and_field(row, fmt, needle):
    with pytest.raises(DataError) as e:
        normalize(row, fmt, 7)
    assert needle in str(e.value)


def test_chat_roles_with_tools_and_trailing_user_turn_counted():
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "call",
                                                                                     "tool_calls": [{"function": {"name": "f"}}]},
            {"role": "tool", "content": "42"}, {"role": "assistant", "content": "it is 42"}, {"role": "user", "content": "thanks"}]
    ex = normalize({"messages": msgs}, "chat", 0)
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex["trailing_removed"] == 1


def test_preprocessing_errors_name_row_and_function():
    def boom(row):
        raise KeyError("gold")
    with pytest.raises(DataError, match=r"row 4: preprocessing function m:boom raised KeyError"):
        apply_preprocessing({}, boom, "m:boom", 4)
    with pytest.raises(DataError, match=r"row 4: preprocessing function m:f returned list, not a dict"):
        apply_preprocessing({}, lambda r: [1], "m:f", 4)
