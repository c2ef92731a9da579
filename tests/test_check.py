"""`tunesmith check`: a preflight that writes nothing, lists every problem, and estimates the run."""
import pytest

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config

ROWS = [{"prompt": f"Q: what is {i} plus {i}?\nA: ", "response": f"{2 * i}"} for i in range(40)]


def test_check_estimates_without_writing_anything(tmp_path, tiny_llama, capsys):
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tiny_llama), "output_dir": "out",
                                               "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64},
                                               "training": {"per_device_train_batch_size": 4}})
    assert main(["check", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "check: data.train: 40 rows, sampled 40: ~40 kept" in err
    assert "10 steps per epoch" in err and "parameters" in err and "MB" in err and "s per epoch" in err
    assert "check: no problems" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "rows.jsonl"]


def test_check_lists_every_problem_at_once(tmp_path, tiny_llama, capsys):
    rows = ROWS[:10] + [{"prompt": "Q", "response": ""}] + [{"prompt": "Q: " + "long " * 200, "response": "x"}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tiny_llama), "output_dir": "out",
                                               "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 1024,
                                                        "overlength": "error", "eval": {"data_files": "missing.jsonl"}},
                                               "training": {"warmup_ratio": 0.1}})
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "check found 3 problem(s)" in err
    assert "training.warmup_ratio: unknown key" in err
    assert "missing.jsonl: data file not found (data.eval.data_files)" in err
    assert "data.max_length 1024 is over the model's max_position_embeddings 512" in err
    # the eval source failed, so the train sample is not reached in this run; fix it and check again
    write_jsonl(tmp_path / "missing.jsonl", ROWS[:4])
    assert main(["check", str(cfg), "training={}", "data.max_length=512"]) == 2
    err = capsys.readouterr().err
    assert "check found 2 problem(s)" in err, err[-1500:]
    assert "1 of 12 sampled rows are malformed, e.g. row 10: field 'response' is empty" in err
    assert "1 of 12 sampled rows are over data.max_length=512, e.g. row 11" in err
    assert not (tmp_path / "out").exists()


def estimated_peak_mb(tmp_path, name: str, training: dict) -> int:
    """check's memory estimate for 8 rows of 2k tokens on a 16-layer, 1024-wide Llama."""
    from transformers import LlamaConfig

    from tunesmith.check import estimate

    cfg = load_config(write_config(tmp_path / f"{name}.yaml", {
        "base_model": "unused", "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 2048},
        "training": {"per_device_train_batch_size": 8, **training}}))
    model_config = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, vocab_size=32000)
    train = {"rows_kept_est": 800, "tokens_est": 800 * 2000, "trained_tokens_est": 800 * 1000}
    return estimate(cfg, model_config, train)["peak_memory_mb"]


@pytest.mark.parametrize("training", [{"gradient_checkpointing": True}, {"activation_checkpointing": True},
                                      {"gradient_checkpointing": True, "activation_checkpointing": False},
                                      {"gradient_checkpointing": False, "activation_checkpointing": True}])
def test_estimate_counts_activations_as_the_trainer_will_keep_them(tmp_path, training):
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing (the old name is an
    alias the new one overrides): the estimate follows whichever the Trainer will act on."""
    from transformers import TrainingArguments

    recomputes = TrainingArguments(output_dir=str(tmp_path / "args"), use_cpu=True, **training).activation_checkpointing
    on = estimated_peak_mb(tmp_path, "on", {"activation_checkpointing": True})
    off = estimated_peak_mb(tmp_path, "off", {})
    assert off - on > 4000  # 16k tokens of 16 layers' activations, kept without recomputation
    assert estimated_peak_mb(tmp_path, "user", training) == (on if recomputes else off)
