"""`tunesmith check`: a preflight that writes nothing, lists every problem, and estimates the run."""
from helpers import write_config, write_jsonl
from tunesmith.cli import main

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
