"""Preference training end to end on tiny random Llamas: answer log-probs equal the model's own,
the reference is the starting model (adapter off, or precomputed once and reused), every
objective trains, padding-free equals padded, and 2 processes give the 1-process update."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers import write_config, write_jsonl
from test_distributed import torchrun
from tunesmith.cli import main
from tunesmith.hf import IGNORE
from tunesmith.train.loss import use_trained_positions_loss
from tunesmith.train.preference import PreferenceCollator
from tunesmith.train.sequence_logps import logps_from_logits

QUESTIONS = [("color of the sky?", "blue", "green"), ("capital of France?", "Paris", "Rome"), ("2+2?", "4", "5"),
             ("opposite of hot?", "cold", "warm"), ("first letter?", "A", "Z"), ("largest planet?", "Jupiter", "Mars"),
             ("frozen water?", "ice", "steam"), ("fox says?", "unknown", "moo")]
PAIRS = [{"prompt": f"Q: {q}\nA: ", "chosen": good, "rejected": bad} for q, good, bad in QUESTIONS]
LORA = {"method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


def setup(tmp_path, base, objective="dpo", model=None, rows=PAIRS, data=None, **training):
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = {"name": "pref", "base_model": str(base), "output_dir": "out", "objective": objective,
           "data": {"train": {"data_files": "pairs.jsonl"}, "max_length": 64, **(data or {})},
           "model": model or {},
           "training": {"max_steps": 12, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "logging_steps": 1,
                        "save_strategy": "no", "disable_tqdm": True, "bf16": False, **training}}
    return write_config(tmp_path / "cfg.yaml", cfg)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_answer_logps_at_answer_positions_equal_the_models_full_logits_with_gradients(tiny_llama):
    torch.manual_seed(0)
    features = [{"chosen_input_ids": [1, 5, 6, 7, 8], "chosen_labels": [IGNORE, IGNORE, IGNORE, 7, 8],
                 "rejected_input_ids": [1, 5, 6, 9, 10, 11], "rejected_labels": [IGNORE, IGNORE, IGNORE, 9, 10, 11]},
                {"chosen_input_ids": [1, 12, 13], "chosen_labels": [IGNORE, IGNORE, 13],
                 "rejected_input_ids": [1, 12, 14, 15], "rejected_labels": [IGNORE, IGNORE, 14, 15]}]
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    fast = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    assert use_trained_positions_loss(fast)
    padded = PreferenceCollator(pad_id=0, padding_free=False, count_real_tokens=False)(features)
    packed = PreferenceCollator(pad_id=0, padding_free=True, count_real_tokens=False)(features)
    want, want_tokens = logps_from_logits(plain(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits,
                                          padded["labels"], None, IGNORE)
    got = fast(input_ids=packed["input_ids"], labels=packed["labels"], position_ids=packed["position_ids"], score_sequences=True)
    assert torch.allclose(got.logps[:4], want, atol=1e-5) and torch.equal(got.tokens[:4], want_tokens)
    assert want_tokens.tolist() == [2, 1, 3, 2]  # chosen, chosen, rejected, rejected
    weights = torch.tensor([0.3, -1.0, 2.0, 0.5])
    (want * weights).sum().backward()
    (got.logps[:4] * weights).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("model", [LORA, {}], ids=["lora_adapter_off", "full_precomputed"])
def test_dpo_starts_at_log2_learns_the_preference_and_reports_it(tmp_path, tiny_llama, model, capsys):
    cfg = setup(tmp_path, tiny_llama, model=model, learning_rate=1e-2 if model else 3e-3, max_steps=20,
                per_device_train_batch_size=8)
    assert main(["run", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert ("the base with the adapter off" if model else "precomputed once before training") in err
    logs = [r for r in records(tmp_path / "out") if "loss" in r]
    # At the first step the policy is the reference: every pair's loss is log 2, the margins 0.
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and logs[0]["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert logs[-1]["loss"] < 0.8 * math.log(2) and logs[-1]["rewards/accuracies"] == 1.0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["objective"].startswith("dpo") and summary["reference"] == ("adapter_off" if model else "precomputed")
    assert summary["rewards_accuracies"] == 1.0 and summary["rewards_margins"] > 0
    stored = list((tmp_path / "out" / "data" / "reference").glob("*.npz"))
    assert len(stored) == (0 if model else 1)
    if not model:  # a second run on the same data and model reads the stored values
        assert main(["train", str(cfg)]) == 0
        assert "reference log-probs read from" in capsys.readouterr().err
        assert [r["loss"] for r in records(tmp_path / "out") if "loss" in r][0] == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("objective", ["ipo", "simpo", "orpo"])
def test_reference_free_and_other_pair_objectives_learn(tmp_path, tiny_llama, objective):
    cfg = setup(tmp_path, tiny_llama, objective=objective, max_steps=16)
    assert main(["run", str(cfg)]) == 0
    logs = [r for r in records(tmp_path / "out") if "loss" in r]
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["reference"] == ("precomputed" if objective == "ipo" else "none")


def test_kto_on_unpaired_rows_learns(tmp_path, tiny_llama):
    rows = unpaired()
    cfg = setup(tmp_path, tiny_llama, objective="kto", model=LORA, rows=rows, max_steps=16, learning_rate=1e-2,
                per_device_train_batch_size=8)
    assert main(["run", str(cfg)]) == 0
    logs = [r for r in records(tmp_path / "out") if "loss" in r]
    assert logs[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) for every row at the start
    assert logs[-1]["loss"] < 0.48 and logs[-1]["rewards/chosen"] > logs[-1]["rewards/rejected"] + 0.1
    rows_file = str(tmp_path / "pairs.jsonl")  # the unpaired rows setup() wrote
    for label, model in (("before", []), ("after", ["--model", str(tmp_path / "out" / "final")])):
        assert main(["eval", str(cfg), "--data", rows_file, "--label", label, *model]) == 0
    before, after = (json.loads((tmp_path / "out" / "eval" / label / "metrics.json").read_text()) for label in ("before", "after"))
    assert before["rows_scored"] == after["rows_scored"] == len(rows)
    assert after["logp_margin_per_token"] > before["logp_margin_per_token"]


def test_padding_free_batches_and_the_models_own_logits_give_the_same_update(tmp_path, tiny_llama):
    outs = {}
    for batching, loss in (("padding_free", "auto"), ("padded", "auto"), ("padded", "model")):
        folder = tmp_path / f"{batching}-{loss}"
        cfg = setup(folder, tiny_llama, max_steps=3, optim="sgd", learning_rate=0.5)
        assert main(["run", str(cfg), f"data.batching={batching}", f"model.loss={loss}"]) == 0
        outs[folder.name] = load_file(folder / "out" / "final" / "model.safetensors")
    first, *others = outs.values()
    for other in others:
        assert max((first[k] - other[k]).abs().max().item() for k in first) < 1e-5


def test_wrong_rows_for_the_objective_and_adapter_off_without_adapter_are_refused(tmp_path, tiny_llama, capsys):
    cfg = setup(tmp_path, tiny_llama)
    assert main(["prep", str(cfg)]) == 0
    assert main(["train", str(cfg), "objective=kto"]) == 2
    assert "holds preference pairs, but objective kto trains on unpaired (KTO) rows" in capsys.readouterr().err
    assert main(["train", str(cfg), "objective.reference=adapter_off"]) == 2
    assert "adapter_off needs an adapter" in capsys.readouterr().err


def unpaired(pairs=PAIRS):
    return [r for p in pairs for r in ({"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                                       {"prompt": p["prompt"], "completion": p["rejected"], "label": False})]


@pytest.mark.parametrize("objective,model", [("dpo", LORA), ("dpo", {}), ("kto", LORA), ("orpo", {})],
                         ids=["dpo-lora", "dpo-full", "kto-lora", "orpo-full"])
def test_two_processes_give_the_one_process_update(tmp_path, tiny_llama, objective, model):
    rows = unpaired() if objective == "kto" else PAIRS * 2
    common = dict(max_steps=3, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=1e9,
                  eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=3)
    held_out = {"validation_split": 0.25}
    two = setup(tmp_path / "two", tiny_llama, objective=objective, model=model, rows=rows, data=held_out,
                per_device_train_batch_size=2, **common)
    result = torchrun(["-m", "tunesmith.cli", "run", str(two)], cwd=str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    # One process with the whole step's rows in one batch (KTO's KL estimate is over a step's batch on every process).
    one = setup(tmp_path / "one", tiny_llama, objective=objective, model=model, rows=rows, data=held_out,
                per_device_train_batch_size=4, **common)
    assert main(["run", str(one)]) == 0
    name = "adapter_model.safetensors" if model else "model.safetensors"
    a, b = (load_file(tmp_path / side / "out" / "final" / name) for side in ("two", "one"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    start = load_file(tiny_llama / "model.safetensors")
    if not model:
        assert max((a[k] - start[k]).abs().max().item() for k in a if k in start) > 1e-3  # it trained
    two_logs, one_logs = (records(tmp_path / s / "out") for s in ("two", "one"))
    margin = "rewards/chosen" if objective == "kto" else "rewards/margins"
    for key in ("loss", margin, "eval_loss", f"eval_{margin}"):
        mine, theirs = [r[key] for r in two_logs if key in r], [r[key] for r in one_logs if key in r]
        assert mine and mine == pytest.approx(theirs, abs=1e-5), key


def test_sft_then_dpo_chained_and_the_card_says_both_stages(tmp_path, tiny_llama):
    rows = [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS]
    write_jsonl(tmp_path / "sft" / "rows.jsonl", rows)
    write_config(tmp_path / "sft" / "cfg.yaml", {
        "name": "stage-one", "base_model": str(tiny_llama), "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}},
        "training": {"max_steps": 3, "save_strategy": "no", "disable_tqdm": True}})
    assert main(["run", str(tmp_path / "sft" / "cfg.yaml")]) == 0
    sft_final = tmp_path / "sft" / "out" / "final"
    cfg = setup(tmp_path / "dpo", sft_final, max_steps=2, train_sampling_strategy="group_by_length")
    assert main(["run", str(cfg)]) == 0
    final = tmp_path / "dpo" / "out" / "final"
    stages = json.loads((final / "tunesmith_stages.json").read_text())
    assert [(s["run"], s["objective"]) for s in stages] == [("stage-one", "sft"), ("pref", "dpo")]
    assert stages[1]["base_model"] == str(sft_final)
    card = (final / "README.md").read_text()
    assert "## Training stages" in card and "1. `sft`" in card and "2. `dpo`, beta 0.1" in card
    assert "| objective | dpo (sigmoid, beta 0.1) |" in card


def test_eval_on_pairs_gives_preference_accuracy_base_against_trained(tmp_path, tiny_llama):
    cfg = setup(tmp_path, tiny_llama, max_steps=20, per_device_train_batch_size=8)
    assert main(["run", str(cfg)]) == 0
    pairs = str(tmp_path / "pairs.jsonl")
    assert main(["eval", str(cfg), "--data", pairs, "--label", "before"]) == 0
    assert main(["eval", str(cfg), "--data", pairs, "--model", str(tmp_path / "out" / "final"), "--label", "after"]) == 0
    before, after = (json.loads((tmp_path / "out" / "eval" / label / "metrics.json").read_text()) for label in ("before", "after"))
    assert before["pairs"] == after["pairs"] == len(PAIRS)
    assert after["logp_margin"] > before["logp_margin"] and after["preference_accuracy"] >= before["preference_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "eval" / "after" / "predictions.jsonl").read_text().splitlines()]
    wins = sum(r["chosen_logp"] > r["rejected_logp"] for r in rows) / len(rows)
    assert wins == after["preference_accuracy"]


def test_reference_store_is_keyed_by_the_rows_recomputed_when_damaged_and_absent_for_one_file(tmp_path, tiny_llama, capsys):
    cfg = setup(tmp_path, tiny_llama, max_steps=1)
    assert main(["run", str(cfg)]) == 0
    store, = (tmp_path / "out" / "data" / "reference").glob("*.npz")
    store.write_bytes(b"cut short")
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 0  # computed again, and stored whole
    assert "read from" not in capsys.readouterr().err
    assert main(["train", str(cfg)]) == 0
    assert "reference log-probs read from" in capsys.readouterr().err
    write_jsonl(tmp_path / "pairs.jsonl", [{**p, "chosen": p["chosen"] + "!"} for p in PAIRS])  # as many rows, other ids
    assert main(["run", str(cfg)]) == 0
    assert "read from" not in capsys.readouterr().err
    assert len(list((tmp_path / "out" / "data" / "reference").glob("*.npz"))) == 1  # prep replaced the folder
    one_file = ["data.output_layout=dataset", "data.writer=to_parquet", f"data.output={tmp_path / 'pairs.parquet'}"]
    assert main(["run", str(cfg), *one_file]) == 0  # nowhere to store beside one file: computed, not stored


def test_an_eval_set_of_other_rows_is_refused_before_training(tmp_path, tiny_llama, capsys):
    write_jsonl(tmp_path / "sft" / "rows.jsonl", [{"prompt": p["prompt"], "response": p["chosen"]} for p in PAIRS])
    sft = write_config(tmp_path / "sft" / "cfg.yaml", {"name": "s", "base_model": str(tiny_llama), "output_dir": "out",
                                                       "data": {"train": {"data_files": "rows.jsonl"}}})
    assert main(["prep", str(sft)]) == 0
    cfg = setup(tmp_path, tiny_llama, max_steps=1)
    assert main(["run", str(cfg), f"eval_data={tmp_path / 'sft' / 'out' / 'data'}"]) == 2
    assert "holds SFT rows, but objective dpo trains on preference pairs" in capsys.readouterr().err
    assert not (tmp_path / "out" / "final").exists()


def test_dpo_steps_equal_trls_dpotrainer_on_the_same_batches(tmp_path, tok_dir):
    """End to end, fp32, full fine-tuning, the same pairs in the same order: tunesmith's DPO run and
    TRL's DPOTrainer (with its own reference model) log the same loss at every step."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from helpers import make_tiny_llama

    base = make_tiny_llama(tok_dir, tmp_path / "base", tied=False)
    pairs = [{"prompt": f"Q: what is {i} plus {i}?\nA: ", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {2 * i + 1}, or not."}
             for i in range(16)]
    common = dict(per_device_train_batch_size=4, num_train_epochs=1, learning_rate=0.1, optim="sgd",
                  lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                  max_grad_norm=1e9, seed=0, train_sampling_strategy="sequential", use_cpu=True, disable_tqdm=True)
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = write_config(tmp_path / "cfg.yaml", {"name": "eq", "base_model": str(base), "output_dir": "out",
                                               "objective": {"name": "dpo", "beta": 0.1},
                                               "data": {"train": {"data_files": "pairs.jsonl"}, "max_length": 128},
                                               "training": common})
    assert main(["run", str(cfg)]) == 0
    ours = [r["loss"] for r in records(tmp_path / "out") if "loss" in r]

    model, ref = (AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32) for _ in range(2))
    trl = DPOTrainer(model=model, ref_model=ref, processing_class=AutoTokenizer.from_pretrained(base),
                     train_dataset=load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"), split="train"),
                     args=DPOConfig(output_dir=str(tmp_path / "trl"), max_length=128, beta=0.1, gradient_checkpointing=False,
                                    **common))
    trl.train()
    theirs = [r["loss"] for r in trl.state.log_history if "loss" in r]
    assert len(ours) == len(theirs) == 4 and ours[0] == pytest.approx(math.log(2), abs=1e-6)
    assert ours == pytest.approx(theirs, abs=1e-5) and ours[-1] < 0.5 * ours[0]


def test_gradient_checkpointing_gives_the_same_dpo_update_with_the_adapter_off_reference(tmp_path, tiny_llama):
    outs = {}
    for checkpointing in (False, True):
        folder = tmp_path / str(checkpointing)
        cfg = setup(folder, tiny_llama, model=LORA, max_steps=3, optim="sgd", learning_rate=0.5,
                    gradient_checkpointing=checkpointing)
        assert main(["run", str(cfg)]) == 0
        outs[checkpointing] = load_file(folder / "out" / "final" / "adapter_model.safetensors")
        assert [r["loss"] for r in records(folder / "out") if "loss" in r][0] == pytest.approx(math.log(2), abs=1e-6)
    a, b = outs.values()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
