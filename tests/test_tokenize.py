"""The prompt|answer boundary is exact in token space, for every built-in format and both BOS styles."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from tunesmith.config.schema import PromptConfig
from dataclasses import replace

from tunesmith.data.chat_template import Template, render_with_template
from tunesmith.data.prompts import BUILTIN_FORMATS, example_to_turns, render_turns, resolve_format, select_trained
from tunesmith.data.tokenize import encode_batch, fit_length, specials_of
from tunesmith.hf import IGNORE

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40)
RESPONSE = TEXT.filter(lambda s: s.strip())


@pytest.fixture(scope="module", params=["tok_dir", "bos_tok_dir"])
def tok(request):
    return AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode(tok, segments):
    sp = specials_of(tok)
    (ids, labels), = encode_batch([segments], tok, sp)
    return ids, labels, sp


@pytest.mark.parametrize("fmt_name", sorted(BUILTIN_FORMATS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, response=RESPONSE)
def test_trained_tokens_decode_to_the_answer(tok, fmt_name, text, response):
    sp = specials_of(tok)
    fmt = resolve_format(fmt_name, sp.bos_text, sp.eos_text)
    example = {"kind": "input", "input": text, "contexts": [], "response": response}
    segments = render_turns(example_to_turns(example, PromptConfig()), fmt)
    ids, labels, sp = encode(tok, segments)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    masked = [i for i, lab in zip(ids, labels) if lab == IGNORE]
    answer = response + fmt.response_suffix
    expected_answer = answer if answer.rstrip().endswith(sp.eos_text) else answer + sp.eos_text
    assert decode(tok, trained) == expected_answer
    prompt_text = "".join(t for t, tr in segments if not tr)
    assert decode(tok, masked) == (sp.bos_text if sp.adds_bos else "") + prompt_text
    assert labels[-1] == sp.eos_id  # EOS is trained, also when pad == eos
    assert ids.count(sp.bos_id) == (1 if sp.adds_bos else 0)
    assert all(lab in (IGNORE, i) for i, lab in zip(ids, labels))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=TEXT, answer=RESPONSE)
def test_chat_template_boundary_is_exact(tok, user, answer):
    turns = example_to_turns({"kind": "chat", "messages": [{"role": "user", "content": user},
                                                           {"role": "assistant", "content": answer}]}, PromptConfig())
    template = Template(tok)
    [segments] = render_with_template(turns, template)
    sp = replace(specials_of(tok), end_of_turn=template.end_of_turn)
    (ids, labels), = encode_batch([segments], tok, sp)
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    # ChatML ends the turn with <|im_end|>\n: the end-of-turn token is trained (generation stops at
    # it), the newline after it is not, and no EOS is added after the template's own end of turn.
    assert template.end_of_turn == "<|im_end|>"
    assert decode(tok, trained) == answer + "<|im_end|>"
    full = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=False)
    assert "".join(t for t, _ in segments) == full


def test_template_bos_is_not_doubled(bos_tok_dir):
    tok = AutoTokenizer.from_pretrained(bos_tok_dir)
    ids, labels, sp = encode(tok, [("<s>[INST] hi [/INST]", False), (" yo </s>", True)])
    assert ids.count(sp.bos_id) == 1 and ids[0] == sp.bos_id
    assert ids.count(sp.eos_id) == 1 and labels[-1] == sp.eos_id


def test_eos_trained_when_pad_equals_eos(bos_tok_dir):
    tok = AutoTokenizer.from_pretrained(bos_tok_dir)
    assert tok.pad_token_id == tok.eos_token_id
    ids, labels, sp = encode(tok, [("Q: hi\nA: ", False), ("yo", True)])
    assert ids[-1] == labels[-1] == sp.eos_id


def test_assistant_turns_last_masks_earlier_answers(tok):
    msgs = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]
    turns = select_trained(example_to_turns({"kind": "chat", "messages": msgs}, PromptConfig()), "last")
    ids, labels, sp = encode(tok, render_with_template(turns, Template(tok))[0])
    assert decode(tok, [i for i, lab in zip(ids, labels) if lab != IGNORE]) == "a2<|im_end|>" + sp.eos_text


@pytest.fixture
def long_example(bos_tok_dir):
    tok = AutoTokenizer.from_pretrained(bos_tok_dir)
    ids, labels, sp = encode(tok, [("a long prompt " * 10, False), ("the answer", True)])
    return tok, ids, labels, sp


def test_truncate_cuts_prompt_from_the_left_and_keeps_bos_and_answer(long_example):
    tok, ids, labels, sp = long_example
    n_trained = sum(lab != IGNORE for lab in labels)
    enc = fit_length(ids, labels, n_trained + 5, "truncate", sp, 0)
    assert len(enc.input_ids) == n_trained + 5 and enc.cut == "prompt"
    assert enc.input_ids[0] == sp.bos_id
    assert enc.input_ids[-n_trained:] == ids[-n_trained:] and enc.labels[-n_trained:] == labels[-n_trained:]


def test_truncate_then_cuts_answer_end_when_answer_alone_is_too_long(long_example):
    tok, ids, labels, sp = long_example
    enc = fit_length(ids, labels, 3, "truncate", sp, 0)
    assert len(enc.input_ids) == 3 and enc.cut == "prompt+response" and enc.input_ids[0] == sp.bos_id
    assert enc.labels[1:] == [lab for lab in labels if lab != IGNORE][:2]


def test_drop_and_error_policies(long_example):
    tok, ids, labels, sp = long_example
    assert fit_length(ids, labels, 10, "drop", sp, 0).drop == "too_long"
    assert fit_length(ids, labels, len(ids), "drop", sp, 0).drop == ""
    with pytest.raises(Exception, match=r"row 9: is \d+ tokens long, over data.max_length=10"):
        fit_length(ids, labels, 10, "error", sp, 9)


def test_a_tokenizer_without_pad_pads_with_eos(tmp_path, tok_dir):
    from tunesmith.hf import load_tokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token_id is None
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id
