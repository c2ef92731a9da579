"""The two-step workflow's own YAML shapes (saturncloud/llm's starting point) run unchanged:
registered prompt methods, the format chosen by base_model, one Dataset written where the
framework writes it, LoRA always on, and errors that name the user's keys."""
import json
import subprocess
import sys

import pytest
from datasets import Dataset, load_dataset, load_from_disk
from transformers import AutoTokenizer

from helpers import write_config
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.prompts import example_to_turns
from tunesmith.errors import ConfigError

ROWS = [{"input": f"What is {i} plus {i}?", "context": [f"{i} is a number."], "response": f"{2 * i}"} for i in range(12)]


@pytest.fixture
def raw_dir(tmp_path):
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "raw"))
    return tmp_path / "raw"


def dataprep(tmp_path, tiny_llama, raw_dir, name="dataprep_train.yaml", out="train", **keys):
    cfg = {"source_config": {"method": "load_from_disk", "kwargs": {"dataset_path": str(raw_dir)}},
           "base_model": str(tiny_llama),
           "dataset_writer_config": {"method": "save_to_disk", "kwargs": {"dataset_path": str(tmp_path / out)}}, **keys}
    return write_config(tmp_path / name, {k: v for k, v in cfg.items() if v is not None})


def test_starting_point_default_prompt_writes_one_dataset_with_exact_masks(tmp_path, tiny_llama, raw_dir):
    path = dataprep(tmp_path, tiny_llama, raw_dir, prompt_config={"method": "DefaultPrompt"})
    proc = subprocess.run([sys.executable, "-m", "tunesmith.dataprep", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "prompt_config DefaultPrompt -> data.prompt" in proc.stderr and "not in the framework's model registry" in proc.stderr
    ds = load_from_disk(str(tmp_path / "train"))  # what the framework's users do: a Dataset, not a DatasetDict
    assert isinstance(ds, Dataset) and len(ds) == 12
    assert {"input_ids", "labels", "attention_mask", "full_text"} <= set(ds.column_names)
    row = ds[0]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    prompt = "Context: 0 is a number.\nInput: What is 0 plus 0?\nResponse: "
    assert row["full_text"] == f"<s>{prompt}0</s>"
    prompt_ids = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tok("0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert row["input_ids"] == prompt_ids + answer_ids
    assert row["labels"] == [-100] * len(prompt_ids) + answer_ids
    assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_no_prompt_config_means_default_prompt(tmp_path, tiny_llama, raw_dir):
    assert main(["prep", str(dataprep(tmp_path, tiny_llama, raw_dir))]) == 0
    assert load_from_disk(str(tmp_path / "train"))[0]["full_text"].startswith("<s>Context: 0 is a number.\nInput: ")
    cfg = load_config(dataprep(tmp_path, tiny_llama, raw_dir))
    assert any("DefaultPrompt (no prompt_config: the framework's default method)" in n for n in cfg.seed_compat)


@pytest.mark.parametrize("base_model,fmt", [
    ("meta-llama/Llama-2-7b-chat-hf", "llama2"), ("lmsys/vicuna-13b-v1.5", "vicuna"), ("mosaicml/mpt-7b-instruct", "dolly"),
    ("mosaicml/mpt-30b-chat", "chatml"), ("togethercomputer/RedPajama-INCITE-7B-Chat", "redpajama"),
    ("meta-llama/Llama-2-7b-hf", "two_step"), ("gpt2", "two_step"),
])
def test_format_comes_from_the_model_registry_when_not_given(tmp_path, base_model, fmt):
    path = write_config(tmp_path / "d.yaml", {"base_model": base_model, "source_config": {"method": "load_dataset", "kwargs": {"path": "x"}}})
    cfg = load_config(path)
    assert cfg.data.prompt_format == fmt
    note = next(n for n in cfg.seed_compat if n.startswith("no prompt_format_config"))
    assert ("registry entry for " + base_model in note) == (base_model not in ("gpt2",))


EXAMPLE = {"kind": "input", "input": "and then?", "contexts": ["Who made it?", "ACME did.", "When?", "In 1999."], "response": "x"}


@pytest.mark.parametrize("method,expect", [
    ("Prompt", "Who made it?\nACME did.\nWhen?\nIn 1999.\nand then?\n"),
    ("ZeroShotQA", "Given the following contexts and a question, create a final answer."),
    ("FewShotQA", "Answer: This Agreement is governed by English law.\n"),
    ("StandaloneQuestion", "Question: Who made it?\nAnswer: ACME did.\nQuestion: When?\nAnswer: In 1999.\nFollowup Question: and then?\n"),
])
def test_each_registered_prompt_method(tmp_path, tiny_llama, method, expect):
    Dataset.from_list([{"input": EXAMPLE["input"], "contexts": EXAMPLE["contexts"], "response": "x"}]).save_to_disk(str(tmp_path / "qa"))
    path = dataprep(tmp_path, tiny_llama, tmp_path / "qa", prompt_config={"method": method}, chunksize=4096)
    assert main(["prep", str(path)]) == 0
    row = load_from_disk(str(tmp_path / "train"))[0]
    assert expect in row["full_text"]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    trained = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert trained == tok("x", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # few-shot answers stay masked


def test_standalone_question_refuses_an_unpaired_context(tmp_path):
    from tunesmith.errors import DataError

    path = write_config(tmp_path / "d.yaml", {"base_model": "gpt2", "prompt_config": {"method": "StandaloneQuestion"},
                                               "source_config": {"method": "load_dataset", "kwargs": {"path": "x"}}})
    with pytest.raises(DataError, match="there are 3"):
        example_to_turns({**EXAMPLE, "contexts": EXAMPLE["contexts"][:3]}, load_config(path).data.prompt)


@pytest.mark.parametrize("writer,read", [("to_json", lambda p: load_dataset("json", data_files=p, split="train")),
                                         ("to_parquet", lambda p: load_dataset("parquet", data_files=p, split="train")),
                                         ("to_csv", lambda p: load_dataset("csv", data_files=p, split="train"))])
def test_registered_writers_write_one_file(tmp_path, tiny_llama, raw_dir, writer, read):
    out = tmp_path / f"train.{writer[3:]}"
    path = dataprep(tmp_path, tiny_llama, raw_dir, dataset_writer_config={"method": writer, "kwargs": {"path_or_buf": str(out)}})
    assert main(["prep", str(path)]) == 0
    ds = read(str(out))
    assert len(ds) == 12 and "full_text" in ds.column_names
    assert json.loads((tmp_path / f"{out.name}.prep_report.json").read_text())["splits"]["train"]["rows_kept"] == 12


def test_finetune_without_lora_config_trains_lora_and_evaluates_its_own_eval_data(tmp_path, tiny_llama, raw_dir, capsys):
    assert main(["prep", str(dataprep(tmp_path, tiny_llama, raw_dir))]) == 0
    assert main(["prep", str(dataprep(tmp_path, tiny_llama, raw_dir, name="dataprep_eval.yaml", out="eval"))]) == 0
    path = write_config(tmp_path / "finetune.yaml", {
        "base_model": str(tiny_llama),
        "train_dataset_config": {"method": "load_from_disk", "kwargs": {"dataset_path": str(tmp_path / "train")}},
        "eval_dataset_config": {"method": "load_from_disk", "kwargs": {"dataset_path": str(tmp_path / "eval")}},
        "local_output": str(tmp_path / "finetune"), "load_in_4bit": True,
        "training_arguments": {"max_steps": 5, "gradient_checkpointing": False}})
    proc = subprocess.run([sys.executable, "-m", "tunesmith.finetune", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no lora_config -> model.method lora" in proc.stderr and "float32 weights on this CPU" in proc.stderr
    assert "quantized loading needs a CUDA GPU" in proc.stderr
    adapter = json.loads((tmp_path / "finetune" / "final" / "adapter_config.json").read_text())
    # peft's defaults for a model the framework's registry does not know: r 8, alpha 8, llama's q_proj/v_proj
    assert (adapter["r"], adapter["lora_alpha"], sorted(adapter["target_modules"])) == (8, 8, ["q_proj", "v_proj"])
    summary = json.loads((tmp_path / "finetune" / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["method"] == "lora" and summary["eval_loss"] is not None


def test_finetune_reads_what_to_json_wrote(tmp_path, tiny_llama, raw_dir):
    out = tmp_path / "train.jsonl"
    assert main(["prep", str(dataprep(tmp_path, tiny_llama, raw_dir, dataset_writer_config={
        "method": "to_json", "kwargs": {"path_or_buf": str(out)}}))]) == 0
    path = write_config(tmp_path / "finetune.yaml", {
        "base_model": str(tiny_llama), "torch_dtype": "float32", "local_output": str(tmp_path / "ft"),
        "train_dataset_config": {"method": "load_dataset", "kwargs": {"path": "json", "data_files": str(out)}},
        "lora_config": {"r": 4}, "training_arguments": {"max_steps": 2, "gradient_checkpointing": False}})
    assert main(["train", str(path)]) == 0
    assert json.loads((tmp_path / "ft" / "summary.json").read_text())["steps"] == 2


@pytest.mark.parametrize("cfg,needle", [
    ({"base_model": "gpt2", "prompt_config": {"method": "DefaultPrompt"},
      "dataset_writer_config": {"method": "save_to_disk", "kwargs": {"dataset_path": "/tmp/train"}}}, "source_config: required key is missing"),
    ({"base_model": "gpt2", "source_config": {"method": "load_dataset", "kwargs": {"path": "x"}},
      "prompt_config": {"method": "Prompt", "kwargs": {"input_template": "no field"}}}, "prompt_config.kwargs.input_template: "),
    ({"base_model": "gpt2", "prompt_config": {"method": "MyPrompt"}, "source_config": {"method": "load_dataset", "kwargs": {"path": "x"}}},
     "prompt_config.method: 'MyPrompt' is not registered"),
    ({"base_model": "gpt2", "train_dataset_config": {"method": "load_from_disk", "kwargs": {"dataset_path": "/x"}},
      "training_arguments": {"max_step": 3}}, "training_arguments.max_step: unknown key; did you mean 'max_steps'"),
    ({"base_model": "gpt2", "source_config": {"method": "load_dataset", "kwargs": {"path": "x"}}, "chunksize": "big"}, "chunksize: "),
])
def test_errors_name_the_users_own_keys(tmp_path, cfg, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path / "c.yaml", cfg))
    assert needle in str(e.value)
    assert "data." not in str(e.value).split("hint:")[0]  # never a key the user did not write


def test_dataprep_on_a_file_without_a_source_names_source_config(tmp_path, tiny_llama, capsys):
    path = write_config(tmp_path / "finetune.yaml", {
        "base_model": str(tiny_llama), "train_dataset_config": {"method": "load_from_disk", "kwargs": {"dataset_path": "/x"}}})
    assert main(["prep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "source_config: required key is missing" in err and "data.train" not in err
