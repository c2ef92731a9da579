"""Property: whatever rows and config values a user gives, prep ends in success or in exit 2 with
one message, never in a traceback; and on exit 2 nothing is left in the output folder."""
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import write_config
from tunesmith.cli import main

COLUMNS = ["prompt", "response", "completion", "input", "context", "contexts", "messages", "text", "extra"]
ROLES = ["system", "user", "assistant", "tool", "narrator", ""]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=40), st.text(alphabet="<>/|s{}\n \t", max_size=12))
# Object keys without NUL: datasets 5.2 cannot decode a struct field whose name holds one (KeyError
# deep in its formatter, reported upstream-worthy in the issue-13 note); every other key is fair game.
keys = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=8)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
                      max_leaves=6)
# Chat turns as public data has them: content parts, tool calls (arguments a JSON string, maybe broken,
# or an object), tool results, reasoning; and ShareGPT turns.
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text(max_size=8)}),
                 max_size=2)
calls = st.lists(st.fixed_dictionaries({"id": st.text(max_size=9), "type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=8), st.none()),
     "arguments": st.one_of(st.text(alphabet='{}":a1 ', max_size=12), st.dictionaries(keys, scalars, max_size=2))})}), max_size=2)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(ROLES), "content": st.one_of(st.text(max_size=30), st.none(), parts)},
    optional={"tool_calls": calls, "reasoning_content": st.text(max_size=10), "tool_call_id": st.text(max_size=9)}),
    max_size=5)
sharegpt = st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "system", "observation", "function_call",
                                                                   "narrator"]),
                                           "value": st.one_of(st.text(max_size=20), st.none())}), max_size=4)
rows = st.lists(st.dictionaries(st.sampled_from([*COLUMNS, "conversations", "tools"]),
                                st.one_of(values, messages, sharegpt, st.text(min_size=1, max_size=30)),
                                min_size=1, max_size=4), min_size=0, max_size=8)
configs = st.fixed_dictionaries({
    "max_length": st.integers(2, 64),
    "overlength": st.sampled_from(["drop", "truncate", "error"]),
    "bad_rows": st.sampled_from(["error", "skip"]),
    "packing": st.booleans(),
    "train_on_prompt": st.booleans(),
    "format": st.sampled_from(["auto", "input", "prompt_response", "chat"]),
    "prompt_format": st.sampled_from(["plain", "alpaca", "chatml", "llama2", "chat_template", "user_assistant"]),
    "assistant_turns": st.sampled_from(["all", "last"]),
    "chat": st.fixed_dictionaries({}, optional={"reasoning": st.sampled_from(["train", "mask", "drop"]),
                                                "empty_think": st.sampled_from(["mask", "train"])}),
    "validation_split": st.one_of(st.none(), st.sampled_from([0.1, 0.5])),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=rows, data=configs, as_lines=st.booleans())
def test_prep_never_ends_in_a_traceback(tok_dir, capsys, rows, data, as_lines):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if as_lines:
            (tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            (tmp / "rows.jsonl").write_text(json.dumps(rows))  # a JSON array in a .jsonl file
        cfg = write_config(tmp / "cfg.yaml", {"base_model": str(tok_dir), "output_dir": "out",
                                              "data": {"train": {"data_files": "rows.jsonl"}, **{k: v for k, v in data.items() if v is not None}}})
        code = main(["prep", str(cfg)])  # anything but a TunesmithError propagates and fails the test
        err = capsys.readouterr().err
        assert code in (0, 2)
        if code == 2:
            assert "tunesmith: error: " in err and "Traceback" not in err
            assert not (tmp / "out").exists()
        else:
            assert (tmp / "out" / "data" / "prep_report.json").is_file()
