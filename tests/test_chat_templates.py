"""Chat data through the real chat templates of the models people fine-tune (fixtures/chat_templates,
with their provenance): for every template and conversation shape it can render,
  1. the ids tunesmith trains on equal the template's own rendering, tokenized, exactly;
  2. the trained tokens are exactly the assistant turns (content, tool calls, end-of-turn token):
     one run of trained tokens per trained turn, ending with the end-of-turn token, holding the
     turn's text and none of the system, user or tool text;
  3. the prompt for turn k (what generate and chat send) is the masked prefix before that turn.
Shapes a template cannot render are refused with a message naming the row, never a traceback.
Tokenizers are tiny BPE ones trained here, with each model's special tokens."""
from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers import CORPUS
from tunesmith.config.schema import ChatConfig, DataConfig
from tunesmith.data.render import make_renderer
from tunesmith.data.tokenize import encode_batch
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
# name -> (bos, eos, special tokens); a template's file is FIXTURES/<name>.jinja.
MODELS = {
    "qwen2_5": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "qwen3": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                                    "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]),
    "mistral": ("<s>", "</s>", ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                                "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"]),
    "gemma2": ("<bos>", "<eos>", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]),
    "phi3": ("<s>", "<|endoftext|>", ["<s>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]),
    "smollm2": (None, "<|im_end|>", ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@cache
def tokenizer(name: str) -> PreTrainedTokenizerFast:
    bos, eos, specials = MODELS[name]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<pad>", *specials], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token="<pad>",
                                   additional_special_tokens=[s for s in specials if s not in (bos, eos)])
    fast.chat_template = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    return fast


def renderer(name: str, **chat):
    return make_renderer(DataConfig(prompt_format="chat_template", chat=ChatConfig(**chat)), tokenizer(name))


def call(name="get_weather", city="Paris", cid="call00001"):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": {"city": city}}}


# Each text is unique, so where it lands (trained or not) can be checked by searching for it.
PLAIN = [{"role": "user", "content": "USER ONE"}, {"role": "assistant", "content": "ANSWER ONE"},
         {"role": "user", "content": "USER TWO"}, {"role": "assistant", "content": "ANSWER TWO"}]
SYSTEM = [{"role": "system", "content": "SYSTEM TEXT"}, *PLAIN[:2]]
TOOL_CALL = [{"role": "user", "content": "USER WEATHER"},
             {"role": "assistant", "content": "", "tool_calls": [call()]},
             {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "TOOL RESULT"},
             {"role": "assistant", "content": "ANSWER WEATHER"}]
REASONING = [{"role": "user", "content": "USER THINK"},
             {"role": "assistant", "content": "ANSWER THINK", "reasoning_content": "THOUGHT TEXT"}]
# An agent turn as thinking models write it: reasoning before the call and before the answer, then a follow-up.
AGENT = [{"role": "user", "content": "USER WEATHER"},
         {"role": "assistant", "content": "", "reasoning_content": "THOUGHT CALL", "tool_calls": [call()]},
         {"role": "tool", "tool_call_id": "call00001", "name": "get_weather", "content": "TOOL RESULT"},
         {"role": "assistant", "content": "ANSWER WEATHER", "reasoning_content": "THOUGHT ANSWER"},
         {"role": "user", "content": "USER THANKS"}, {"role": "assistant", "content": "ANSWER WELCOME"}]
SHAPES = {"plain": (PLAIN, None), "system": (SYSTEM, None), "tools": (TOOL_CALL, TOOLS), "reasoning": (REASONING, None),
          "agent": (AGENT, TOOLS)}
# What each template cannot render, and the start of the message that says so.
REFUSED = {("gemma2", "system"): "the tokenizer's chat template refused this conversation",
           **{(m, shape): "has tool calls, but the tokenizer's chat template does not render tool calls"
              for m in ("gemma2", "phi3", "smollm2") for shape in ("tools", "agent")},
           # a turn that calls a tool is written as the call alone: its reasoning would be lost silently
           **{(m, "agent"): "the chat template leaves out the reasoning of an assistant turn" for m in ("llama3_1", "mistral")}}
CASES = [(m, s) for m in MODELS for s in SHAPES]


def template_ids(tok, messages, tools):
    text = tok.apply_chat_template(messages, tools=tools, tokenize=False)
    return tok(text, add_special_tokens=False)["input_ids"]


def trained_runs(ids, labels):
    runs, current = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def check_row(name: str, messages: list[dict], tools, **chat) -> list[tuple[list[int], list[int]]]:
    """The three equalities for one conversation; returns the encoded examples."""
    r = renderer(name, **chat)
    tok = r.tokenizer
    row = {"messages": messages, **({"tools": tools} if tools else {})}
    examples, _ = r.render(row, 0, "chat")
    encoded = encode_batch(examples, tok, r.specials)
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    decode = lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    if len(examples) == 1:
        ends = [assistant[-1]]
        runs_expected = len(assistant)
    else:  # the template rewrites history: one example per assistant turn, each as inference renders it
        assert len(examples) == len(assistant)
        ends, runs_expected = assistant, 1
    expected = messages if r.template.renders_reasoning else inlined(messages)
    if chat.get("reasoning") == "drop":
        expected = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    for (ids, labels), k in zip(encoded, ends):
        turn_messages = messages[:k + 1]
        assert_template_ids(tok, expected, k, tools, ids)  # 1
        runs = trained_runs(ids, labels)
        assert len(runs) == runs_expected  # 2
        owned = [m for m in turn_messages if m["role"] == "assistant"][-runs_expected:]
        for run, m in zip(runs, owned):
            text = decode(run)
            assert m["content"] in text
            assert text.rstrip().endswith(r.specials.end_of_turn or r.specials.eos_text), text
            for c in m.get("tool_calls", []):
                assert c["function"]["name"] in text and "Paris" in text
        trained_text = decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
        for m in turn_messages:
            if m["role"] != "assistant":
                assert m["content"] not in trained_text
        # 3: the prompt for each turn this example trains is its masked prefix (every turn of a
        # single example; the last one of each per-turn example).
        starts = [p for p in range(len(ids)) if labels[p] != IGNORE and (p == 0 or labels[p - 1] == IGNORE)]
        for start, turn in zip(starts, [a for a in assistant if a <= k][-runs_expected:]):
            reasoned = messages[turn].get("reasoning_content") and chat.get("reasoning", "train") == "train"
            prompter = renderer(name, **{**chat, "thinking": "on" if reasoned else "off"})
            prompt_ids, _ = prompter.prompt({"messages": messages[:turn], **({"tools": tools} if tools else {})}, 0)
            assert prompt_ids == ids[:start], (decode(prompt_ids), decode(ids[:start]))
    return encoded


def assert_template_ids(tok, messages, k, tools, ids):
    """Example k's ids are the template's rendering of turns[:k+1]; where the template's generation
    prompt is not a prefix of that (Mistral drops the system turn once an answer follows), they are
    the generation prompt followed by the answer as the finished form writes it."""
    prompt = tok.apply_chat_template(messages[:k], tools=tools, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages[:k + 1], tools=tools, tokenize=False)
    if full.startswith(prompt):
        assert ids == template_ids(tok, messages[:k + 1], tools)
    else:
        text = tok.decode(ids, skip_special_tokens=False)
        answer = messages[k]["content"]
        assert text.startswith(prompt) and text[len(prompt):] == full[full.rindex(answer):]


def inlined(messages):
    """A template without reasoning_content gets the reasoning in the content, as a <think> block."""
    return [{k: v for k, v in m.items() if k != "reasoning_content"} | (
        {"content": f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}"} if m.get("reasoning_content") else {})
        for m in messages]


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_template_renders_exactly(name, shape):
    messages, tools = SHAPES[shape]
    if (name, shape) in REFUSED:
        with pytest.raises(DataError, match="row 0: " + REFUSED[(name, shape)][:40]):
            check_row(name, messages, tools)
        return
    check_row(name, messages, tools)


@pytest.mark.parametrize("name", ["qwen3"])
def test_history_rewriting_template_splits_turns(name):
    """Qwen3 writes an empty <think></think> in the last turn only: two examples, each masked
    up to and including it (the template's non-thinking prompt writes it)."""
    encoded = check_row(name, PLAIN, None)
    assert len(encoded) == 2
    tok = tokenizer(name)
    ids, labels = encoded[0]
    masked = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE], skip_special_tokens=False)
    assert masked.endswith("<think>\n\n</think>\n\n") or "<think>\n\n</think>\n\n" in masked


def encode_row(name, messages, **chat):
    r = renderer(name, **chat)
    examples, _ = r.render({"messages": messages}, 0, "chat")
    return r.tokenizer, encode_batch(examples, r.tokenizer, r.specials)


def test_reasoning_modes_on_qwen3():
    trained = {}
    for mode in ("train", "mask", "drop"):
        if mode != "mask":  # masked reasoning is in the text but no prompt can know it: equalities 1 and 2 only
            check_row("qwen3", REASONING, None, reasoning=mode)
        tok, [(ids, labels)] = encode_row("qwen3", REASONING, reasoning=mode)
        trained[mode] = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE], skip_special_tokens=False)
        assert ("THOUGHT TEXT" in tok.decode(ids, skip_special_tokens=False)) == (mode != "drop")
        if mode == "mask":
            assert ids == template_ids(tok, REASONING, None)
    assert trained["train"].startswith("<think>\nTHOUGHT TEXT\n</think>\n\nANSWER THINK")
    assert trained["mask"] == "ANSWER THINK<|im_end|>"
    assert trained["drop"] == "ANSWER THINK<|im_end|>"  # its empty <think></think> masked, as the prompt writes it


def test_template_without_reasoning_gets_think_block_in_content():
    """Qwen2.5 has no reasoning_content: the thought is written into the content (DeepSeek-R1's form), trained."""
    r = renderer("qwen2_5")
    [segments], _ = r.render({"messages": REASONING}, 0, "chat")
    trained = "".join(t for t, tr in segments if tr)
    assert trained.startswith("<think>\nTHOUGHT TEXT\n</think>\n\nANSWER THINK")


# ---- every template, random conversations -------------------------------------------------------

WORD = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=12)
ANSWER = WORD.filter(str.strip)  # an empty answer is a bad row (tested above); here, mostly rows that render


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(WORD)}] if draw(st.integers(0, 3)) == 0 else []
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(WORD)})
        if draw(st.booleans()):
            cid = f"call{turn:05d}"
            messages.append({"role": "assistant", "content": "", "tool_calls": [call(city=draw(WORD), cid=cid)]})
            messages.append({"role": "tool", "tool_call_id": cid, "name": "get_weather", "content": draw(WORD)})
        answer = {"role": "assistant", "content": draw(ANSWER) if draw(st.integers(0, 9)) else draw(WORD)}
        if draw(st.booleans()):
            answer["reasoning_content"] = draw(WORD)
        messages.append(answer)
    return messages


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=conversations())
def test_random_conversations_keep_the_equalities_or_are_refused(name, messages):
    tools = TOOLS if any(m.get("tool_calls") for m in messages) else None
    r = renderer(name)
    try:
        examples, _ = r.render({"messages": messages, **({"tools": tools} if tools else {})}, 0, "chat")
    except DataError as e:
        assert str(e).startswith("row 0: ")
        return
    tok = r.tokenizer
    expected = messages if r.template.renders_reasoning else inlined(messages)
    assistant = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    ends = [assistant[-1]] if len(examples) == 1 else assistant
    assert len(examples) in (1, len(assistant))
    for k, (ids, labels) in zip(ends, encode_batch(examples, tok, r.specials)):
        assert_template_ids(tok, expected, k, tools, ids)
        runs = trained_runs(ids, labels)
        assert runs and tok.decode(runs[-1], skip_special_tokens=False).rstrip().endswith(
            r.specials.end_of_turn or r.specials.eos_text)
        # the prompt for turn k is the masked prefix before it
        start = max(p for p in range(len(ids)) if labels[p] != IGNORE and (p == 0 or labels[p - 1] == IGNORE))
        thinking = "on" if messages[k].get("reasoning_content") else "off"
        prompt_ids, _ = renderer(name, thinking=thinking).prompt(
            {"messages": messages[:k], **({"tools": tools} if tools else {})}, 0)
        assert prompt_ids == ids[:start]
