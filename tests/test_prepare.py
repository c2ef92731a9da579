"""End to end through the CLI: config -> prepared dataset on disk, report, and every bad input."""
import json
import subprocess
import sys

import pytest
from datasets import Dataset, load_from_disk
from transformers import AutoTokenizer

from helpers import write_config, write_jsonl
from tunesmith.cli import main

ROWS = [
    {"input": "Alice: hi\nBob: hello", "contexts": ["They are friends."], "response": "Two friends greet."},
    {"input": "Carol: lunch?\nDan: sure", "contexts": [], "response": "They agree to lunch."},
    {"input": "Eve: bye", "response": "Eve leaves."},
]


def run_prep(tmp_path, tok_dir, rows=ROWS, data_file="rows.jsonl", **data):
    if rows is not None:
        write_jsonl(tmp_path / data_file, rows)
    cfg = {"name": "t", "base_model": str(tok_dir), "output_dir": "out",
           "data": {"train": {"data_files": data_file}, **data}}
    return main(["prep", str(write_config(tmp_path / "cfg.yaml", cfg))])


def trained_text(tok, row):
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != -100], skip_special_tokens=False)


def test_two_step_rows_become_masked_training_set(tmp_path, bos_tok_dir):
    assert run_prep(tmp_path, bos_tok_dir, prompt={"input_template": "Conversation: {text}\n",
                                                    "response_template": "Summary: {text}"}) == 0
    ds = load_from_disk(str(tmp_path / "out" / "data"))["train"]
    assert set(ds.column_names) == {"input_ids", "labels", "attention_mask", "full_text"}
    tok = AutoTokenizer.from_pretrained(bos_tok_dir)
    for row, src in zip(ds, ROWS):
        assert trained_text(tok, row) == src["response"] + "</s>"
        assert row["input_ids"][0] == tok.bos_token_id and row["attention_mask"] == [1] * len(row["input_ids"])
        assert row["full_text"].startswith("<s>") and row["full_text"].endswith("Summary: " + src["response"] + "</s>")
    assert ds[0]["full_text"] == "<s>They are friends.\n\nConversation: Alice: hi\nBob: hello\nSummary: Two friends greet.</s>"
    report = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())
    train = report["splits"]["train"]
    assert train["rows_read"] == 3 and train["rows_kept"] == 3 and train["dropped"] == {}
    assert train["trained_tokens"] == sum(sum(lab != -100 for lab in r["labels"]) for r in ds)
    assert 0 < train["trained_share"] < 1 and report["tokens_per_second"] > 0
    meta = json.loads((tmp_path / "out" / "data" / "tunesmith_data.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == len(tok)


def test_overlength_drop_counts_rows_by_reason(tmp_path, tok_dir):
    rows = [{"prompt": "short", "response": "ok"}, {"prompt": "long " * 80, "response": "ok"}, {"prompt": "x", "response": "y"}]
    assert run_prep(tmp_path, tok_dir, rows, max_length=30) == 0
    report = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["dropped"] == {"too_long": {"count": 1, "rows": [1]}}
    assert len(load_from_disk(str(tmp_path / "out" / "data"))["train"]) == 2


def test_overlength_truncate_keeps_answer_and_counts_cuts(tmp_path, tok_dir):
    rows = [{"prompt": "long " * 80, "response": "the answer"}]
    assert run_prep(tmp_path, tok_dir, rows, max_length=30, overlength="truncate") == 0
    row = load_from_disk(str(tmp_path / "out" / "data"))["train"][0]
    assert len(row["input_ids"]) == 30
    assert trained_text(AutoTokenizer.from_pretrained(tok_dir), row) == "the answer</s>"
    report = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["cut"] == {"prompt": {"count": 1, "rows": [0]}}


def test_overlength_error_exits_2_naming_the_row(tmp_path, tok_dir, capsys):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "long " * 80, "response": "ok"}]
    assert run_prep(tmp_path, tok_dir, rows, max_length=30, overlength="error") == 2
    assert "row 1: is" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_rows_skip_is_counted_with_messages(tmp_path, tok_dir):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}, {"prompt": "e", "response": "f"}]
    assert run_prep(tmp_path, tok_dir, rows, bad_rows="skip") == 0
    dropped = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())["splits"]["train"]["dropped"]
    assert dropped["bad_row"]["count"] == 1 and dropped["bad_row"]["rows"] == [1]
    assert "field 'response' is empty" in dropped["bad_row"]["messages"][0]


def test_validation_split_is_deterministic(tmp_path, tok_dir):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(50)]
    texts = []
    for attempt in range(2):
        assert run_prep(tmp_path, tok_dir, rows, validation_split=0.2, seed=7) == 0
        dd = load_from_disk(str(tmp_path / "out" / "data"))
        assert (len(dd["train"]), len(dd["eval"])) == (40, 10)
        texts.append(dd["eval"]["full_text"])
    assert texts[0] == texts[1]


def test_chat_rows_with_tokenizer_template_and_last_turn_only(tmp_path, tok_dir):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "name?"}, {"role": "assistant", "content": "Tuna"}]}]
    assert run_prep(tmp_path, tok_dir, rows, prompt_format="chat_template", assistant_turns="last") == 0
    row = load_from_disk(str(tmp_path / "out" / "data"))["train"][0]
    assert trained_text(AutoTokenizer.from_pretrained(tok_dir), row) == "Tuna<|im_end|>"


def test_column_mapping_and_exports(tmp_path, tok_dir):
    rows = [{"question": "2+2?", "answer": "4"}]
    assert run_prep(tmp_path, tok_dir, rows, columns={"prompt": "question", "response": "answer"},
                    export=["jsonl", "parquet"]) == 0
    out = tmp_path / "out" / "data"
    assert json.loads((out / "train.jsonl").read_text().splitlines()[0])["full_text"] == "2+2?4</s>"
    assert (out / "train.parquet").stat().st_size > 0


ARC = {"query": "Question: Which is a gas?\n", "choices": ["rock", "steam", "ice"], "gold": 1}
PREP_PY = '''
def multiple_choice(row):
    options = "".join(f"\\n - {c}" for c in row["choices"])
    return {"prompt": row["query"] + "\\nOptions:" + options + "\\nAnswer: ", "response": row["choices"][row["gold"]]}
'''


@pytest.mark.parametrize("spec", ["preprocessing:multiple_choice", "preprocessing.py:multiple_choice"])
def test_preprocessing_fn_next_to_the_config(tmp_path, tok_dir, spec, monkeypatch):
    (tmp_path / "preprocessing.py").write_text(PREP_PY)
    monkeypatch.chdir("/")
    assert run_prep(tmp_path, tok_dir, [ARC], preprocessing_fn=spec) == 0
    row = load_from_disk(str(tmp_path / "out" / "data"))["train"][0]
    assert row["full_text"] == "Question: Which is a gas?\n\nOptions:\n - rock\n - steam\n - ice\nAnswer: steam</s>"


def test_sources_csv_parquet_data_dir_from_disk_and_callable(tmp_path, tok_dir):
    Dataset.from_list([{"prompt": "p", "response": "r"}]).to_csv(str(tmp_path / "rows.csv"))
    assert run_prep(tmp_path, tok_dir, None, data_file="rows.csv") == 0
    Dataset.from_list([{"prompt": "p", "response": "r"}]).to_parquet(str(tmp_path / "rows.parquet"))
    assert run_prep(tmp_path, tok_dir, None, data_file="rows.parquet") == 0
    write_jsonl(tmp_path / "dir" / "train.jsonl", [{"prompt": "p", "response": "r"}])
    Dataset.from_list([{"prompt": "p", "response": "r"}]).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "make.py").write_text("from datasets import Dataset\ndef rows():\n    return Dataset.from_list([{'prompt': 'p', 'response': 'r'}])\n")
    for train in ({"path": "json", "data_dir": "dir"}, {"from_disk": "saved"}, {"function": "make.py:rows"}):
        cfg = {"base_model": str(tok_dir), "output_dir": "out", "data": {"train": train}}
        assert main(["prep", str(write_config(tmp_path / "c2.yaml", cfg))]) == 0, train
        assert load_from_disk(str(tmp_path / "out" / "data"))["train"][0]["full_text"] == "pr</s>"


# ---- bad input: exit 2, one message naming file/row/key, nothing left behind -------------------------

def bad(tmp_path, tok_dir, capsys, rows=None, raw_lines=None, base_model=None, **data):
    if raw_lines is not None:
        (tmp_path / "rows.jsonl").write_text(raw_lines)
        rows = None
    elif rows is not None:
        write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = {"base_model": base_model or str(tok_dir), "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}, **data}}
    rc = main(["prep", str(write_config(tmp_path / "cfg.yaml", cfg))])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("tunesmith: error:") == 1
    assert "ERROR" not in err  # no library log lines beside our one message
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*tmp*"))
    return err


def test_bad_missing_file(tmp_path, tok_dir, capsys):
    assert "rows.jsonl: data file not found" in bad(tmp_path, tok_dir, capsys)


def test_bad_jsonl_line_gives_line_number(tmp_path, tok_dir, capsys):
    err = bad(tmp_path, tok_dir, capsys, raw_lines='{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')
    assert "rows.jsonl: line 2 is not valid JSON" in err


@pytest.mark.parametrize("rows,needle", [
    ([{"prompt": "a", "response": "b"}, {"prompt": "c"}], "row 1: missing required field 'response'"),
    ([{"input": "a", "response": "b"}, {"input": "c", "response": 5}], "row 1: field 'response' must be a string, got int"),
    ([{"prompt": "a", "response": ""}], "row 0: field 'response' is empty"),
    ([{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}],
     "row 0: messages[0]: role 'assistant' cannot come at the start"),
    ([{"question": "a", "answer": "b"}], "cannot tell the data format from its columns ['answer', 'question']"),
])
def test_bad_rows(tmp_path, tok_dir, capsys, rows, needle):
    assert needle in bad(tmp_path, tok_dir, capsys, rows)


@pytest.mark.parametrize("body,needle", [
    ("def fn(row):\n    return row['nope']\n", "row 0: preprocessing function"),
    ("def fn(row):\n    return 'text'\n", "returned str, not a dict"),
])
def test_bad_preprocessing_fn(tmp_path, tok_dir, capsys, body, needle):
    (tmp_path / "pp.py").write_text(body)
    err = bad(tmp_path, tok_dir, capsys, [{"a": 1}], preprocessing_fn="pp.py:fn")
    assert needle in err and "pp.py:fn" in err


def test_bad_unknown_config_key(tmp_path, tok_dir, capsys):
    message = bad(tmp_path, tok_dir, capsys, [{"prompt": "a", "response": "b"}], overlenght="drop")
    assert "data.overlenght: unknown key; did you mean 'overlength'?" in message


def test_bad_tokenizer(tmp_path, tok_dir, capsys):
    err = bad(tmp_path, tok_dir, capsys, [{"prompt": "a", "response": "b"}], base_model=str(tmp_path))
    assert f"cannot load a tokenizer from {str(tmp_path)!r}" in err


def test_bad_unknown_prompt_format(tmp_path, tok_dir, capsys):
    assert "unknown format 'chatlm'" in bad(tmp_path, tok_dir, capsys, [{"prompt": "a", "response": "b"}], prompt_format="chatlm")


def test_failed_rerun_keeps_the_previous_good_output(tmp_path, tok_dir):
    assert run_prep(tmp_path, tok_dir, [{"prompt": "a", "response": "b"}]) == 0
    assert run_prep(tmp_path, tok_dir, [{"prompt": "a", "response": ""}]) == 2
    assert load_from_disk(str(tmp_path / "out" / "data"))["train"][0]["full_text"] == "ab</s>"


def test_preview_marks_trained_tokens(tmp_path, tok_dir, capsys):
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "Q: hi\nA: ", "response": "hello"}])
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "data": {"train": {"data_files": "rows.jsonl"}}})
    assert main(["preview", str(cfg), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "Q: hi\nA: \u27e6hello</s>\u27e7" in out and "row 0: " in out and "3 trained (7 masked)" in out  # hello = 2 tokens + EOS


def test_module_entry_point_runs_as_in_the_two_step_workflow(tmp_path, tok_dir):
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}}})
    proc = subprocess.run([sys.executable, "-m", "tunesmith.dataprep", str(cfg), "data.max_length=64"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(load_from_disk(str(tmp_path / "out" / "data"))["train"]) == 3
    proc = subprocess.run([sys.executable, "-m", "tunesmith.dataprep", str(cfg), "data.max_length=x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "data.max_length" in proc.stderr


def test_remote_sources_through_fsspec(tmp_path, tok_dir, monkeypatch):
    """`memory://` is an fsspec filesystem like s3:// or gs://: the same code path, no network."""
    import datasets.config
    import fsspec
    import huggingface_hub.constants

    # The suite runs with the Hub switched off, which also blocks every URL; memory:// reaches no network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    fs = fsspec.filesystem("memory")
    with fs.open("memory://bucket/rows.jsonl", "w") as f:
        f.write('{"prompt": "p", "response": "r"}\n')
    Dataset.from_list([{"prompt": "p", "response": "r"}]).save_to_disk("memory://bucket/saved")
    for train in ({"path": "json", "data_files": "memory://bucket/rows.jsonl"}, {"from_disk": "memory://bucket/saved"}):
        cfg = {"base_model": str(tok_dir), "output_dir": "out", "data": {"train": train}}
        assert main(["prep", str(write_config(tmp_path / "c.yaml", cfg))]) == 0, train
        assert load_from_disk(str(tmp_path / "out" / "data"))["train"][0]["full_text"] == "pr</s>"


def test_worker_processes_write_the_same_rows_and_report(tmp_path, tok_dir):
    # Batches in several processes, token columns built as Arrow arrays: same result as one process,
    # dropped and bad rows still counted, column types as declared.
    rows = [{"prompt": f"question {i} " * (1 + i % 7), "response": f"answer {i}"} for i in range(60)]
    rows[7] = {"prompt": "long " * 80, "response": "x"}
    rows[11] = {"prompt": "p", "response": ""}
    results = []
    for procs in (1, 2):
        assert run_prep(tmp_path, tok_dir, rows, max_length=100, bad_rows="skip", num_proc=procs) == 0
        ds = load_from_disk(str(tmp_path / "out" / "data"))["train"]
        report = json.loads((tmp_path / "out" / "data" / "prep_report.json").read_text())["splits"]["train"]
        results.append((ds.to_dict(), {k: report[k] for k in ("rows_read", "rows_kept", "dropped", "tokens", "trained_tokens")}))
        assert {k: str(v.feature.dtype) for k, v in ds.features.items() if k != "full_text"} == \
            {"input_ids": "int32", "labels": "int32", "attention_mask": "int8"}
    assert results[0] == results[1]
    data, report = results[0]
    assert report["rows_read"] == 60 and report["rows_kept"] == 58 and set(report["dropped"]) == {"too_long", "bad_row"}
    assert all(m == [1] * len(ids) for ids, m in zip(data["input_ids"], data["attention_mask"]))
    assert sum(len(ids) for ids in data["input_ids"]) == report["tokens"]
