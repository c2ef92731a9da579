from pathlib import Path

import pytest

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import ConfigError


def base_cfg(tok_dir, **data):
    return {"base_model": str(tok_dir), "data": {"train": {"data_files": "rows.jsonl"}, **data}}


def test_unknown_key_names_path_and_suggests(tmp_path, tok_dir):
    cfg = write_config(tmp_path / "c.yaml", base_cfg(tok_dir, max_lenght=12))
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "data.max_lenght: unknown key; did you mean 'max_length'?" in str(e.value)


def test_unknown_nested_key_in_source_and_prompt(tmp_path, tok_dir):
    cfg = write_config(tmp_path / "c.yaml", base_cfg(tok_dir, prompt={"system_mesage": "x"}))
    with pytest.raises(ConfigError, match=r"data.prompt.system_mesage: unknown key; did you mean 'system_message'"):
        load_config(cfg)


def test_wrong_type_and_missing_required(tmp_path, tok_dir):
    cfg = write_config(tmp_path / "c.yaml", {"data": {"train": {"data_files": "x.jsonl"}, "max_length": "long"}})
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert "base_model: required key is missing" in msg
    assert "data.max_length:" in msg and "'long'" in msg


def test_source_needs_exactly_one_kind(tmp_path, tok_dir):
    cfg = write_config(tmp_path / "c.yaml", {"base_model": "x", "data": {"train": {"split": "train"}}})
    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(cfg)


def test_builder_inferred_from_extension(tmp_path, tok_dir):
    cfg = load_config(write_config(tmp_path / "c.yaml", base_cfg(tok_dir)))
    assert cfg.data.train.path == "json"
    cfg = load_config(write_config(tmp_path / "d.yaml", {"base_model": "x", "data": {"train": {"data_files": ["a.parquet"]}}}))
    assert cfg.data.train.path == "parquet"


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path, tok_dir):
    path = write_config(tmp_path / "c.yaml", base_cfg(tok_dir))
    cfg = load_config(path, ["data.max_length=1024", "data.prompt.system_message=Be brief", "name=exp1"])
    assert cfg.data.max_length == 1024 and cfg.data.prompt.system_message == "Be brief" and cfg.name == "exp1"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["data.max_length"])
    with pytest.raises(ConfigError, match="data.max_length"):
        load_config(path, ["data.max_length=abc"])


def test_relative_paths_resolve_against_config_folder(tmp_path, tok_dir, monkeypatch):
    cfg_dir = tmp_path / "project" / "configs"
    path = write_config(cfg_dir / "c.yaml", {
        "base_model": str(tok_dir), "output_dir": "../out",
        "data": {"train": {"data_files": "../data/rows.jsonl"}, "preprocessing_fn": "prep.py:fn"}})
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    cfg = load_config(path)
    assert Path(cfg.data.train.data_files) == (tmp_path / "project" / "data" / "rows.jsonl").resolve()
    assert Path(cfg.output_dir) == (tmp_path / "project" / "out").resolve()
    assert cfg.data.preprocessing_fn == f"{cfg_dir.resolve() / 'prep.py'}:fn"


def test_hub_ids_and_urls_are_left_alone(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"base_model": "gpt2", "data": {"train": {"path": "json", "data_files": "s3://bucket/x.jsonl"}}})
    cfg = load_config(path)
    assert cfg.base_model == "gpt2" and cfg.data.train.data_files == "s3://bucket/x.jsonl"


def test_cli_exit_2_with_one_message_no_traceback(tmp_path, tok_dir, capsys):
    cfg = write_config(tmp_path / "c.yaml", base_cfg(tok_dir, max_lenght=12))
    assert main(["prep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunesmith: error:") and "max_length" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        main(["--debug", "prep", str(cfg)])


def test_eval_source_and_validation_split_are_exclusive(tmp_path, tok_dir):
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    cfg = write_config(tmp_path / "c.yaml", base_cfg(tok_dir, validation_split=0.1, eval={"data_files": "rows.jsonl"}))
    with pytest.raises(ConfigError, match="either `eval`"):
        load_config(cfg)


def test_init_template_is_a_valid_config_once_filled(tmp_path, tok_dir):
    assert main(["init", str(tmp_path)]) == 0
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "response": "b"}])
    cfg = load_config(tmp_path / "config.yaml", [f"base_model={tok_dir}", "data.train.data_files=rows.jsonl"])
    assert cfg.model.method == "lora" and cfg.data.prompt_format == "plain"
    assert main(["prep", str(tmp_path / "config.yaml"), f"base_model={tok_dir}", "data.train.data_files=rows.jsonl"]) == 0
    assert main(["init", str(tmp_path)]) == 2  # never overwrites


@pytest.mark.parametrize("example", ["summarization/local.yaml", "summarization/hub-llama2-7b-4bit.yaml", "chat/chat.yaml",
                                     "arc_easy/cpu.yaml", "arc_easy/gpu-8b-qlora.yaml", "summarization/dataprep.yaml",
                                     "summarization/finetune.yaml", "agent/agent.yaml"])
def test_example_configs_validate(example):
    from tunesmith.config.training_keys import check_training_keys

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / example)
    check_training_keys(cfg.training)


@pytest.mark.parametrize("text,key,lines", [
    ("name: a\nbase_model: m\ntraining:\n  learning_rate: 1.0e-4\n  learning_rate: 2.0e-4\n", "learning_rate", (4, 5)),
    ("name: a\nbase_model: m\nname: b\n", "name", (1, 3)),
    ("base_model: m\ndata: {max_length: 8, max_length: 9}\n", "max_length", (2, 2)),
    # the two reference frameworks' forms are read by the same loader
    ("base_model: gpt2\ndataprep:\n  input_path: a\n  input_path: b\n", "input_path", (3, 4)),
    ("variables:\n  x: 1\nmax_seq_len: 8\nmax_seq_len: 9\n", "max_seq_len", (3, 4)),
])
def test_a_key_given_twice_is_named_with_both_lines(tmp_path, capsys, text, key, lines):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    assert f"key {key!r} is given twice, on line {lines[0]} and on line {lines[1]}" in capsys.readouterr().err


def test_training_values_checked_and_numbers_as_text_read(tmp_path, capsys, tok_dir):
    text = ("base_model: {tok}\ntraining:\n  learning_rate: 1e-4\n  per_device_train_batch_size: 0\n"
            "  lr_scheduler_type: cosnie\n  num_train_epochs: three\n  bf16: yes please\n  max_grad_norm: -1\n")
    path = tmp_path / "c.yaml"
    path.write_text(text.format(tok=tok_dir))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rate: '1e-4' read as the number 0.0001" in err
    for line in ["training.per_device_train_batch_size: must be at least 1, got 0",
                 "training.lr_scheduler_type: must be one of linear, cosine,",
                 "training.num_train_epochs: must be a number, got 'three' (str)",
                 "training.bf16: must be true or false, got 'yes please' (str)",
                 "training.max_grad_norm: must be 0 or more, got -1"]:
        assert line in err, line
    assert "Traceback" not in err
    # written as text but plainly a number: the run goes on with the number
    from tunesmith.config.training_keys import check_training_keys

    training = {"learning_rate": "1e-4", "warmup_steps": "10", "gradient_accumulation_steps": "2"}
    check_training_keys(training)
    assert training == {"learning_rate": 1e-4, "warmup_steps": 10, "gradient_accumulation_steps": 2}
