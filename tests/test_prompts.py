"""Rendering is a pure function: check exact text and the mask of each segment."""
import pytest

from tunesmith.config.schema import PromptConfig
from tunesmith.data.prompts import BUILTIN_FORMATS, example_to_turns, render_turns, resolve_format, select_trained

EX = {"kind": "input", "input": "What is 2+2?", "contexts": ["Math facts."], "response": "4"}


def render(example=EX, fmt="plain", prompt=None, train_on_prompt=False, assistant_turns="all"):
    turns = select_trained(example_to_turns(example, prompt or PromptConfig()), assistant_turns)
    return render_turns(turns, resolve_format(fmt, "<s>", "</s>"), train_on_prompt)


@pytest.mark.parametrize("fmt,expected", [
    ("plain", [("Math facts.\n\nWhat is 2+2?", False), ("4", True)]),
    ("user_assistant", [("User: Math facts.\nWhat is 2+2?\nAssistant: ", False), ("4", True)]),
    ("alpaca", [("### Instruction:\nWhat is 2+2?\n\n### Input:\nMath facts.\n\n### Response:\n", False), ("4", True)]),
    ("dolly", [("### Instruction:\nWhat is 2+2?\n\nInput:\nMath facts.\n\n### Response:\n", False), ("4\n\n### End", True)]),
    ("vicuna", [("USER: Math facts.\nWhat is 2+2? ASSISTANT: ", False), ("4</s>", True)]),
    ("llama2", [("[INST] Math facts.\nWhat is 2+2? [/INST] ", False), ("4 </s>", True)]),
    ("chatml", [("<|im_start|>user\nMath facts.\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", False), ("4<|im_end|>", True)]),
])
def test_builtin_formats_exact_text_and_mask(fmt, expected):
    assert render(fmt=fmt) == expected


def test_llama2_puts_system_inside_first_instruction():
    segs = render(fmt="llama2", prompt=PromptConfig(system_message="Be brief."))
    assert segs[0] == ("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nMath facts.\nWhat is 2+2? [/INST] ", False)


def test_saturn_templates_cue_is_masked_and_contexts_indexed():
    prompt = PromptConfig(system_message="Please summarize the following conversation", input_template="Conversation: {text}\n",
                          context_template="Context {index}: {text}", response_template="Summary: {text}")
    ex = {"kind": "input", "input": "A: hi B: yo", "contexts": ["c1", "c2"], "response": "They greet."}
    segs = render(ex, "plain", prompt)
    assert segs == [("Please summarize the following conversation\n\nContext 1: c1\n\nContext 2: c2\n\n"
                     "Conversation: A: hi B: yo\nSummary: ", False), ("They greet.", True)]


def test_few_shot_examples_are_fully_masked():
    prompt = PromptConfig(examples=[{"input": "1+1?", "response": "2"}, {"input": "2+3?", "response": "5"}],
                          input_template="Q: {text}\n", response_template="A: {text}")
    segs = render({"kind": "input", "input": "2+2?", "contexts": [], "response": "4"}, "plain", prompt)
    assert segs == [("Q: 1+1?\nA: 2\n\nQ: 2+3?\nA: 5\n\nQ: 2+2?\nA: ", False), ("4", True)]
    assert [t for t, trained in segs if trained] == ["4"]


def chat(*pairs):
    msgs = [{"role": r, "content": c} for r, c in pairs]
    return {"kind": "chat", "messages": msgs}


def test_chat_trains_every_assistant_turn_or_only_the_last():
    ex = chat(("system", "S"), ("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"))
    segs = render(ex, "chatml")
    assert [t for t, tr in segs if tr] == ["a1<|im_end|>", "a2<|im_end|>"]
    assert segs[0][0].startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu1")
    assert [t for t, tr in render(ex, "chatml", assistant_turns="last") if tr] == ["a2<|im_end|>"]


def test_llama2_multi_turn_starts_later_turns_with_bos():
    ex = chat(("user", "u1"), ("assistant", "a1"), ("user", "u2"), ("assistant", "a2"))
    text = "".join(t for t, _ in render(ex, "llama2"))
    assert text == "[INST] u1 [/INST] a1 </s><s>[INST] u2 [/INST] a2 </s>"


def test_train_on_prompt_trains_everything():
    assert render(fmt="chatml", train_on_prompt=True) == [(
        "<|im_start|>user\nMath facts.\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>", True)]


def test_system_message_from_prompt_is_a_default_for_chat_rows():
    ex = chat(("user", "u"), ("assistant", "a"))
    assert render(ex, "user_assistant", PromptConfig(system_message="Sys"))[0][0].startswith("System: Sys\n")


def test_bos_eos_placeholders_are_filled_from_the_tokenizer_and_content_is_untouched():
    fmt = resolve_format(BUILTIN_FORMATS["vicuna"], "<B>", "<E>")
    assert fmt.response_suffix == "<E>"
    ex = {"kind": "input", "input": "write {eos}", "contexts": [], "response": "ok"}
    assert render_turns(example_to_turns(ex, PromptConfig()), fmt)[0][0] == "USER: write {eos} ASSISTANT: "
