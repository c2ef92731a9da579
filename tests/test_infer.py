"""Evaluation metrics, choice ranking, generation parity with training, and merge (tiny models)."""
import json

import pytest
import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.prompt_settings import PROMPT_FILE
from tunesmith.data.prompts import BUILTIN_FORMATS
from tunesmith.data.render import make_renderer
from tunesmith.infer.evaluate import choice_scores
from tunesmith.infer.batching import generate_ids, length_sorted_batches
from tunesmith.infer.generate import cut_at_stop, read_prompts
from tunesmith.infer.metrics import exact_match, normalize_answer, rouge_l

PAIRS = [("color of the sky?", "blue"), ("capital of France?", "Paris"), ("2+2?", "4"), ("opposite of hot?", "cold"),
         ("first letter?", "A"), ("largest planet?", "Jupiter"), ("frozen water?", "ice"), ("fox says?", "unknown")]


def test_exact_match_and_rouge_l_known_values():
    assert normalize_answer("  The  Answer, is: Blue! ") == "the answer is blue"
    assert exact_match("Blue.", "blue") == 1.0 and exact_match("light blue", "blue") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    # LCS("the cat was on the mat", "the cat sat on the mat") = 5 of 6 words each side -> F1 = 5/6
    assert rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert rouge_l("dog", "the cat") == 0.0 and rouge_l("", "") == 1.0


def test_cut_at_stop_strings():
    assert cut_at_stop("Paris\n### Instruction: next", ["### Instruction:"]) == "Paris\n"
    assert cut_at_stop("Paris", ["<|im_end|>"]) == "Paris"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_llama):
    """The toy task trained once: a model that knows the answers."""
    tmp = tmp_path_factory.mktemp("toy")
    rows = [{"query": f"Q: {q}\nA: ", "choices": ["wrong", a, "nope"], "gold": 1} for q, a in PAIRS]
    write_jsonl(tmp / "rows.jsonl", rows)
    (tmp / "mc.py").write_text("def fn(row):\n    return {'prompt': row['query'], 'response': row['choices'][row['gold']]}\n")
    cfg = write_config(tmp / "cfg.yaml", {
        "name": "toy", "base_model": str(tiny_llama), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "eval": {"data_files": "rows.jsonl"},
                 "preprocessing_fn": "mc.py:fn", "max_length": 64},
        "training": {"max_steps": 60, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 10,
                     "eval_steps": 30, "save_steps": 1000}})
    assert main(["run", str(cfg)]) == 0
    return tmp, cfg


def test_eval_before_and_after_on_known_answers(toy_run):
    tmp, cfg = toy_run
    assert main(["eval", str(cfg), "--model", str(tmp / "out" / "final"), "--label", "tuned", "--max-new-tokens", "8"]) == 0
    tuned = json.loads((tmp / "out" / "eval" / "tuned" / "metrics.json").read_text())
    assert tuned["exact_match"] == 1.0 and tuned["choice_accuracy"] == 1.0 and tuned["rouge_l"] == 1.0
    assert tuned["rows"] == 8 and tuned["eval_loss"] < 0.5
    preds = [json.loads(line) for line in (tmp / "out" / "eval" / "tuned" / "predictions.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in preds] == [a for _, a in PAIRS]
    assert all(p["predicted_choice"] == 1 == p["gold"] for p in preds)
    assert main(["eval", str(cfg), "--max-new-tokens", "8"]) == 0  # the base model, same command
    base = json.loads((tmp / "out" / "eval" / "base" / "metrics.json").read_text())
    assert base["eval_loss"] > tuned["eval_loss"] + 1 and base["exact_match"] < 0.5


def test_choice_ranking_prefers_what_the_model_learned(toy_run):
    tmp, cfg = toy_run
    config = load_config(cfg)
    tok = AutoTokenizer.from_pretrained(tmp / "out" / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp / "out" / "final")
    renderer = make_renderer(config.data, tok)
    scores = choice_scores(model, tok, renderer, {"query": "Q: capital of France?\nA: ", "choices": ["Jupiter", "Paris", "ice"], "gold": 1})
    assert max(range(3), key=scores.__getitem__) == 1 and all(s < 0 for s in scores)


@pytest.mark.parametrize("fmt", sorted([*BUILTIN_FORMATS, "chat_template"]))
def test_generation_prompt_is_the_training_prompt(tmp_path, bos_tok_dir, fmt):
    """The ids the model is prompted with at inference are exactly the masked ids it trained on."""
    rows = [{"input": "Alice: hi", "contexts": ["They met."], "response": "A greeting."},
            {"input": "Q2", "response": "R2"}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg_path = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(bos_tok_dir), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "prompt_format": fmt,
                 "prompt": {"system_message": "Be brief.", "examples": [{"input": "ex", "response": "ok"}],
                            "response_template": "Summary: {text}"}}})
    assert main(["prep", str(cfg_path)]) == 0
    prepared = load_from_disk(str(tmp_path / "out" / "data"))["train"]
    renderer = make_renderer(load_config(cfg_path).data, AutoTokenizer.from_pretrained(bos_tok_dir))
    for row, done in zip(rows, prepared):
        first_trained = next(i for i, lab in enumerate(done["labels"]) if lab != -100)
        ids, answer = renderer.prompt({k: v for k, v in row.items() if k != "response"})
        assert ids == done["input_ids"][:first_trained]
        assert answer is None


def one_row_at_a_time(model, tok, prompts, max_new_tokens, stop_strings):
    """The reference: a plain `model.generate` per row, no padding anywhere."""
    stop = {"stop_strings": stop_strings, "tokenizer": tok} if stop_strings else {}
    return [model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                           eos_token_id=tok.eos_token_id, **stop)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("stop_strings", [[], ["e"]], ids=["eos", "eos_and_stop_string"])
def test_batched_generation_equals_one_row_at_a_time(toy_run, stop_strings):
    tmp, cfg = toy_run
    tok = AutoTokenizer.from_pretrained(tmp / "out" / "final")
    model = AutoModelForCausalLM.from_pretrained(tmp / "out" / "final", dtype=torch.float32).eval()
    renderer = make_renderer(load_config(cfg).data, tok)
    # Trained questions stop early at EOS; unseen ones of other lengths run on to the limit.
    questions = [f"Q: {q}\nA: " for q, _ in PAIRS] + [
        "Q: why?\nA: ", "Q: what is the weather like today in a city far away from here?\nA: ",
        "Q: name a planet\nA: ", "Q: how many legs does a fox have, and why?\nA: "]
    prompts = [renderer.prompt({"query": q, "choices": ["x"], "gold": 0}, i)[0] for i, q in enumerate(questions)]
    want = one_row_at_a_time(model, tok, prompts, 4, stop_strings)
    got = generate_ids(model, tok, prompts, stop_strings, max_new_tokens=4, batch_size=5, show_progress=False)
    assert got == want
    eos = tok.eos_token_id
    assert any(len(a) < 4 and a[-1] == eos for a in got)  # rows that stopped early at EOS
    assert any(len(a) == 4 and eos not in a for a in got)  # and rows that ran to the limit, in the same batches
    if stop_strings:
        assert any(len(a) < 4 and a[-1] != eos for a in got)  # stopped by the string
    batches = length_sorted_batches([len(p) for p in prompts], 5)
    assert sorted(i for b in batches for i in b) == list(range(len(prompts)))
    assert all(len(prompts[i]) >= len(prompts[j]) for a, b in zip(batches, batches[1:]) for i in a for j in b)
    # a batch where one row stopped early and another ran on: per-row stopping really was exercised
    assert any(len({len(got[i]) < 4 for i in b}) == 2 for b in batches)


def test_length_batches_cap_padding_and_size():
    lengths = [400, 46, 300, 50, 45, 40, 30, 120, 44, 46]
    batches = length_sorted_batches(lengths, batch_size=4)
    assert batches == [[0, 2], [7], [3, 1, 9, 4], [8, 5, 6]]  # 120 alone: with 50 it would pad 70
    for b in batches:  # padding to the batch's longest prompt stays under a quarter of its real tokens
        assert max(lengths[i] for i in b) * len(b) <= 1.25 * sum(lengths[i] for i in b)
    assert length_sorted_batches([5] * 40, 16) == [list(range(0, 16)), list(range(16, 32)), list(range(32, 40))]


def test_generate_command_reads_json_and_plain_prompts(toy_run, capsys, tmp_path):
    tmp, cfg = toy_run
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('{"query": "Q: 2+2?\\nA: ", "choices": ["4"], "gold": 0}\nQ: frozen water?\\nA: \n')
    assert read_prompts(str(prompts))[1] == {"prompt": "Q: frozen water?\nA: ", "_plain_text": True}
    assert main(["generate", str(cfg), "--model", str(tmp / "out" / "final"), "--prompts", str(prompts),
                 "--max-new-tokens", "6"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [o["answer"] for o in out] == ["4", "ice"]


def test_merge_command_matches_adapter(tmp_path, tiny_llama):
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"Q: {q}\nA: ", "response": a} for q, a in PAIRS])
    cfg = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(tiny_llama), "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}},
        "model": {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "training": {"max_steps": 10, "learning_rate": 1e-2, "save_steps": 1000}})
    assert main(["run", str(cfg)]) == 0
    assert main(["merge", str(cfg), "--out", str(tmp_path / "m")]) == 0
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tmp_path / "out" / "final")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor([[1, 54, 31, 226, 72, 84, 81, 84]])
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-4)
    assert (tmp_path / "m" / "tokenizer.json").is_file() and (tmp_path / "m" / "README.md").is_file()  # with its card
    # merged/ prompts as the adapter does: the same prompt settings travel with it
    assert (tmp_path / "m" / PROMPT_FILE).read_text() == (tmp_path / "out" / "final" / PROMPT_FILE).read_text()
    assert main(["merge", str(cfg), "--adapter", str(tmp_path / "m")]) == 2  # not an adapter: clear error


def test_chat_keeps_history_and_uses_the_training_template(tmp_path, tiny_llama):
    import io

    from tunesmith.infer.chat import chat

    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(tiny_llama), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "prompt_format": "chatml", "max_length": 64},
        "training": {"max_steps": 80, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "save_steps": 1000}})
    assert main(["run", str(cfg)]) == 0
    config, final = load_config(cfg), str(tmp_path / "out" / "final")
    out = io.StringIO()
    history = chat(config, final, 8, io.StringIO("capital of France?\n/reset\n2+2?\n\n"), out)
    assert out.getvalue().splitlines() == ["Paris", "4"]
    assert history == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]  # /reset cleared turn 1
    history = chat(config, final, 8, io.StringIO("capital of France?\nfrozen water?\n"), io.StringIO())
    assert [m["content"] for m in history][:2] == ["capital of France?", "Paris"] and len(history) == 4


@pytest.mark.parametrize("fmt", ["chatml", "llama2", "chat_template"])
def test_multi_turn_generation_prompt_is_the_training_prompt(tmp_path, bos_tok_dir, fmt):
    """With every assistant turn trained, earlier answers are their own segments in training;
    the inference prompt for the last answer must be tokenized the same way."""
    messages = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello, friend"},
                {"role": "user", "content": "name?"}, {"role": "assistant", "content": "Tuna"}]
    write_jsonl(tmp_path / "rows.jsonl", [{"messages": messages}])
    cfg_path = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(bos_tok_dir), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "prompt_format": fmt, "assistant_turns": "all"}})
    assert main(["prep", str(cfg_path)]) == 0
    row = load_from_disk(str(tmp_path / "out" / "data"))["train"][0]
    labels = row["labels"]
    last_answer_start = max(i for i in range(1, len(labels)) if labels[i] != -100 and labels[i - 1] == -100)
    renderer = make_renderer(load_config(cfg_path).data, AutoTokenizer.from_pretrained(bos_tok_dir))
    ids, answer = renderer.prompt({"messages": messages})
    assert ids == row["input_ids"][:last_answer_start] and answer == "Tuna"

