"""Preference rows through prep: both sides rendered by the one render path, masked everywhere but
the answer, prompts equal to the inference prompt, a pair kept, dropped or cut as one unit."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from helpers import write_config, write_jsonl
from test_chat_templates import tokenizer as template_tokenizer
from tunesmith.cli import main
from tunesmith.config.schema import DataConfig
from tunesmith.data.pairs import PairRenderer, fit_pair
from tunesmith.data.render import make_renderer
from tunesmith.errors import DataError
from tunesmith.hf import IGNORE

FORMATS = ["plain", "alpaca", "chatml", "llama2", "user_assistant", "chat_template"]
TEMPLATES = ["qwen2_5", "qwen3", "llama3_1", "mistral", "phi3"]
text = st.text(alphabet=st.characters(codec="utf-8", blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)


def trained_run(labels):
    """(first, end) of the trained positions, which must be one contiguous run."""
    first = next(i for i, x in enumerate(labels) if x != IGNORE)
    end = max(i for i, x in enumerate(labels) if x != IGNORE) + 1
    assert all(x != IGNORE for x in labels[first:end]), "a masked token inside the answer"
    return first, end


def check_pair(pairs: PairRenderer, row: dict, sft_prompt_row: dict):
    chosen, rejected = pairs.pair(row, 0)
    prompt_ids, _ = pairs.renderer.prompt(sft_prompt_row)  # what inference prompts the model with
    for side, answer in ((chosen, row["chosen"]), (rejected, row["rejected"])):
        first, end = trained_run(side.labels)
        assert side.ids[:first] == prompt_ids, "the masked prefix is not the inference prompt"
        assert all(x == IGNORE for x in side.labels[end:]), "trained tokens after the answer's end"
        answer_text = answer if isinstance(answer, str) else answer[-1]["content"]
        decoded = pairs.renderer.tokenizer.decode(side.ids[first:end])
        assert answer_text.strip() in decoded, (answer_text, decoded)
    return chosen, rejected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=text, chosen=text, rejected=text, fmt=st.sampled_from(FORMATS), chat=st.booleans())
def test_random_pairs_in_every_format_have_exact_masks(tok_dir, prompt, chosen, rejected, fmt, chat):
    tok = AutoTokenizer.from_pretrained(tok_dir)
    pairs = PairRenderer(make_renderer(DataConfig(prompt_format=fmt), tok))
    if chat:
        user = [{"role": "user", "content": prompt}]
        row = {"chosen": [*user, {"role": "assistant", "content": chosen}],
               "rejected": [*user, {"role": "assistant", "content": rejected}]}
        check_pair(pairs, row, {"messages": user})
    else:
        check_pair(pairs, {"prompt": prompt, "chosen": chosen, "rejected": rejected}, {"prompt": prompt})


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("shape", ["prompt_list", "shared_prefix", "text_answers_with_list_prompt"])
def test_real_chat_templates_multi_turn_pairs(name, shape):
    pairs = PairRenderer(make_renderer(DataConfig(prompt_format="chat_template"), template_tokenizer(name)))
    history = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
               {"role": "user", "content": "Name a colour of the sky."}]
    good, bad = "Blue, on a clear day.", "Potatoes."
    if shape == "prompt_list":
        row = {"prompt": history, "chosen": [{"role": "assistant", "content": good}], "rejected": [{"role": "assistant", "content": bad}]}
    elif shape == "shared_prefix":
        row = {"chosen": [*history, {"role": "assistant", "content": good}], "rejected": [*history, {"role": "assistant", "content": bad}]}
    else:
        row = {"prompt": history, "chosen": good, "rejected": bad}
    chosen, rejected = pairs.pair(row, 0)
    prompt_ids, _ = pairs.renderer.prompt({"messages": history})
    for side, answer in ((chosen, good), (rejected, bad)):
        first, end = trained_run(side.labels)
        assert side.ids[:first] == prompt_ids
        assert answer in pairs.renderer.tokenizer.decode(side.ids[first:end])


def test_sides_with_different_prompts_empty_sides_and_missing_prompts_are_row_errors(tok_dir):
    pairs = PairRenderer(make_renderer(DataConfig(prompt_format="chatml"), AutoTokenizer.from_pretrained(tok_dir)))
    a = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "x"}]
    b = [{"role": "user", "content": "two"}, {"role": "assistant", "content": "y"}]
    with pytest.raises(DataError, match="different prompts"):
        pairs.pair({"chosen": a, "rejected": b}, 3)
    with pytest.raises(DataError, match="row 4: field 'rejected' is empty"):
        pairs.pair({"prompt": "p", "chosen": "x", "rejected": "  "}, 4)
    with pytest.raises(DataError, match="no `prompt`"):
        pairs.pair({"chosen": "x", "rejected": "y"}, 5)
    with pytest.raises(DataError, match="'label' must be true or false"):
        pairs.single({"prompt": "p", "completion": "x", "label": "yes"}, 6)


def test_a_pair_is_cut_as_one_unit(tok_dir):
    pairs = PairRenderer(make_renderer(DataConfig(prompt_format="plain"), AutoTokenizer.from_pretrained(tok_dir)))
    chosen, rejected = pairs.pair({"prompt": "the sky is blue " * 6, "chosen": "blue", "rejected": "red and green and blue " * 3}, 0)
    limit = len(rejected.ids) - 5
    enc_c, enc_r, drop = fit_pair(chosen, rejected, limit, "truncate", pairs.renderer, 0)
    assert drop == "" and enc_c.cut == enc_r.cut == "prompt"
    assert max(len(enc_c.input_ids), len(enc_r.input_ids)) == limit
    first_c, first_r = trained_run(enc_c.labels)[0], trained_run(enc_r.labels)[0]
    assert enc_c.input_ids[:first_c] == enc_r.input_ids[:first_r], "both sides keep the same prompt tokens"
    assert enc_c.labels[first_c:] == chosen.labels[-(len(enc_c.labels) - first_c):], "the answers are whole"
    _, _, drop = fit_pair(chosen, rejected, limit, "drop", pairs.renderer, 0)
    assert drop == "too_long"


def test_prep_counts_pairs_by_reason_and_refuses_pairs_for_sft(tmp_path, tok_dir, capsys):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    rows += [{"prompt": "same", "chosen": "x", "rejected": "x"}, {"prompt": "long " * 80, "chosen": "a", "rejected": "b"},
             {"prompt": "empty", "chosen": "a", "rejected": ""}]
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = {"name": "p", "base_model": str(tok_dir), "output_dir": str(tmp_path / "out"), "objective": "dpo",
           "data": {"train": {"data_files": str(tmp_path / "pairs.jsonl")}, "max_length": 40, "bad_rows": "skip"}}
    assert main(["prep", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    report = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())
    train = report["splits"]["train"]
    assert report["rows_kind"] == "pairs" and train["rows_read"] == 9 and train["rows_kept"] == 6
    assert {k: v["rows"] for k, v in train["dropped"].items()} == {"identical_sides": [6], "too_long": [7], "bad_row": [8]}
    cfg["objective"] = "sft"
    assert main(["prep", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    assert "preference pairs (chosen, rejected), but the objective is sft" in capsys.readouterr().err
    cfg["objective"], cfg["data"]["packing"] = "dpo", True
    assert main(["prep", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    assert "data.packing" in capsys.readouterr().err


def prepared_unpaired(tmp_path, tok_dir, rows: list[dict], max_length: int):
    """`tunesmith prep` of KTO rows -> the prepared train split."""
    from datasets import load_from_disk

    write_jsonl(tmp_path / "kto.jsonl", rows)
    cfg = {"name": "k", "base_model": str(tok_dir), "output_dir": str(tmp_path / "out"), "objective": "kto",
           "data": {"train": {"data_files": str(tmp_path / "kto.jsonl")}, "max_length": max_length}}
    assert main(["prep", str(write_config(tmp_path / "c.yaml", cfg))]) == 0
    return load_from_disk(str(tmp_path / "out" / "data"))["train"]


def test_unpaired_rows_get_a_mismatched_row_each(tmp_path, tok_dir):
    rows = [{"prompt": f"q{i} ", "completion": f"answer {i}", "label": i % 2 == 0} for i in range(4)]
    ds = prepared_unpaired(tmp_path, tok_dir, rows, max_length=40)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert ds["label"] == [True, False, True, False]
    for i in range(4):
        kl = tok.decode(ds[i]["kl_input_ids"])
        assert kl.startswith(f"q{i} ") and f"answer {(i + 1) % 4}" in kl


def test_preference_example_prepares_the_arc_pairs_with_the_sft_examples_prompts(tmp_path, tok_dir):
    from pathlib import Path

    from datasets import load_from_disk

    from tunesmith.config import load_config
    from tunesmith.data.rows import render_setup

    root = Path(__file__).resolve().parents[1] / "examples"
    assert main(["prep", str(root / "preference" / "dpo.yaml"), f"base_model={tok_dir}", f"output_dir={tmp_path}",
                 "data.max_length=2048"]) == 0  # the tiny test tokenizer spends more tokens per word
    data = load_from_disk(str(tmp_path / "data"))
    assert (len(data["train"]), len(data["eval"])) == (240, 60)  # 80 and 20 questions, 3 wrong choices each
    questions = [json.loads(line) for line in (root / "arc_easy" / "arc_easy_100.jsonl").read_text().splitlines()]
    sft = load_config(root / "arc_easy" / "cpu.yaml", [f"base_model={tok_dir}"])
    prompt_ids, _ = render_setup(sft).prompt(questions[0])  # the SFT example's prompt for question 0
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for k, row in enumerate(data["train"].select(range(3))):
        first, end = trained_run(row["chosen_labels"])
        assert row["chosen_input_ids"][:first] == prompt_ids and row["rejected_input_ids"][:first] == prompt_ids
        assert tok.decode(row["chosen_input_ids"][first:end]).startswith(questions[0]["choices"][questions[0]["gold"]])
        wrong = [c for i, c in enumerate(questions[0]["choices"]) if i != questions[0]["gold"]][k]
        assert tok.decode(row["rejected_input_ids"][first:]).startswith(wrong)


def test_preprocessing_function_and_columns_apply_once_to_the_preference_row(tmp_path, tok_dir):
    (tmp_path / "prep_fn.py").write_text(
        "def to_pair(row):\n    return {'prompt': row['q'], 'chosen': row['good'], 'rejected': row['bad']}\n")
    write_jsonl(tmp_path / "raw.jsonl", [{"q": f"question {i}", "good": f"yes {i}", "bad": f"no {i}"} for i in range(4)])
    write_jsonl(tmp_path / "named.jsonl", [{"question": f"question {i}", "response": f"yes {i}", "other": f"no {i}"}
                                           for i in range(4)])
    tok = AutoTokenizer.from_pretrained(tok_dir)
    from datasets import load_from_disk

    for name, data in (("fn", {"train": {"data_files": "raw.jsonl"}, "preprocessing_fn": "prep_fn.py:to_pair"}),
                       ("cols", {"train": {"data_files": "named.jsonl"},
                                 "columns": {"prompt": "question", "chosen": "response", "rejected": "other"}})):
        cfg = {"name": name, "base_model": str(tok_dir), "output_dir": str(tmp_path / name), "objective": "dpo",
               "data": {**data, "prompt_format": "chatml"}}
        assert main(["prep", str(write_config(tmp_path / f"{name}.yaml", cfg))]) == 0
        ds = load_from_disk(str(tmp_path / name / "data"))["train"]
        assert len(ds) == 4
        first, end = trained_run(ds[2]["chosen_labels"])
        assert tok.decode(ds[2]["chosen_input_ids"][:first]).endswith("question 2<|im_end|>\n<|im_start|>assistant\n")
        assert tok.decode(ds[2]["chosen_input_ids"][first:end]).startswith("yes 2")
        assert tok.decode(ds[2]["rejected_input_ids"][first:]).startswith("no 2")


def test_sharegpt_sides_and_a_side_that_does_not_end_with_its_answer(tok_dir):
    pairs = PairRenderer(make_renderer(DataConfig(prompt_format="chatml"), AutoTokenizer.from_pretrained(tok_dir)))
    human = {"from": "human", "value": "hi"}
    chosen, rejected = pairs.pair({"chosen": [human, {"from": "gpt", "value": "hello"}],
                                   "rejected": [human, {"from": "gpt", "value": "go away"}]}, 0)
    first, _ = trained_run(chosen.labels)
    assert pairs.renderer.tokenizer.decode(chosen.ids[first:]).startswith("hello")
    chosen, _ = pairs.pair({"prompt": [human], "chosen": "hello", "rejected": "go away"}, 0)
    assert pairs.renderer.tokenizer.decode(chosen.ids[trained_run(chosen.labels)[0]:]).startswith("hello")
    trailing = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "and?"}]
    with pytest.raises(DataError, match="chosen ends with turns after its last assistant answer"):
        pairs.pair({"chosen": trailing, "rejected": trailing[:1] + [{"role": "assistant", "content": "y"}]}, 0)


def test_kto_mismatched_rows_skip_the_same_prompt_and_fit_max_length(tmp_path, tok_dir):
    rows = []
    for i in range(3):  # each prompt twice in a row (desirable, then undesirable), as pairs turned into KTO rows are
        rows += [{"prompt": f"q{i} " * (1 + 3 * (i == 1)), "completion": f"good {i} " * (1 + 2 * (i == 2)), "label": True},
                 {"prompt": f"q{i} " * (1 + 3 * (i == 1)), "completion": f"bad {i}", "label": False}]
    ds = prepared_unpaired(tmp_path, tok_dir, rows, max_length=30)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(ds) == 6
    for row in ds:
        first, _ = trained_run(row["labels"])
        kl_first, _ = trained_run(row["kl_labels"])
        assert row["kl_input_ids"][:kl_first] == row["input_ids"][:first]  # its own prompt
        assert tok.decode(row["kl_input_ids"][kl_first:]) not in tok.decode(row["input_ids"][first:])  # another answer
        own_prompt_answers = {tok.decode(r["input_ids"][trained_run(r["labels"])[0]:]) for r in ds
                              if r["input_ids"][:trained_run(r["labels"])[0]] == row["input_ids"][:first]}
        assert tok.decode(row["kl_input_ids"][kl_first:]) not in own_prompt_answers  # never its own prompt's answer
        assert len(row["kl_input_ids"]) <= 30
    assert max(len(r["kl_input_ids"]) for r in ds) == 30  # q1's prompt with q2's long answer: cut at max_length
