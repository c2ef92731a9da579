"""Every loader and format error on the user's input: exit 2, the file/key/line named, a hint,
no traceback, and nothing left in the output folder."""
import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from helpers import write_config, write_jsonl
from tunesmith.cli import main

GOOD = '{"prompt": "Q: hi\\nA: ", "response": "yo"}\n'


def prep_fails(tmp_path, capsys, source: dict, expected: list[str], base_model, **data) -> str:
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(base_model), "output_dir": "out",
                                               "data": {"train": source, "max_length": 64, **data}})
    assert main(["prep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tunesmith: error: " in err and "Traceback" not in err
    for text in expected:
        assert text.format(dir=tmp_path) in err, (text, err)
    assert not (tmp_path / "out").exists()
    return err


# name -> (files to write, source spec, substrings of the message)
CASES = {
    "empty jsonl": ({"t.jsonl": b""}, {"data_files": "t.jsonl"}, ["{dir}/t.jsonl: the file is empty (data.train)", "hint:"]),
    "empty csv": ({"t.csv": b""}, {"data_files": "t.csv"}, ["{dir}/t.csv: the file is empty (data.train)"]),
    "empty text": ({"t.txt": b""}, {"data_files": "t.txt"}, ["{dir}/t.txt: the file is empty (data.train)"]),
    "empty parquet": ({"t.parquet": b""}, {"data_files": "t.parquet"}, ["{dir}/t.parquet: the file is empty"]),
    "jsonl bad line": ({"t.jsonl": (GOOD + "{oops\n").encode()}, {"data_files": "t.jsonl"},
                       ["{dir}/t.jsonl: line 2 is not valid JSON", "(column 2)"]),
    "jsonl not an object": ({"t.jsonl": (GOOD + "[1, 2]\n").encode()}, {"data_files": "t.jsonl"},
                            ["{dir}/t.jsonl: line 2 is a JSON list, not an object"]),
    "json array cut short": ({"t.json": b'[{"prompt": "a", "response": "b"},\n {"prompt": '}, {"data_files": "t.json"},
                             ["{dir}/t.json: not valid JSON at line 2"]),
    "csv ragged row": ({"t.csv": b"prompt,response\nx,y\nz,w,v\n"}, {"data_files": "t.csv"},
                       ["{dir}/t.csv: not valid CSV", "Expected 2 fields in line 3, saw 3", "(data.train)"]),
    "csv not utf-8": ({"t.csv": b"prompt,response\n\xff\xfe,y\n"}, {"data_files": "t.csv"},
                      ["{dir}/t.csv: not UTF-8 text", "encoding: latin-1"]),
    "csv columns fit no format": ({"t.csv": b"a,b\n1,2\n"}, {"data_files": "t.csv"},
                                  ["data.train ({dir}/t.csv): cannot tell the data format from its columns ['a', 'b']", "data.columns"]),
    "parquet corrupt": ({"t.parquet": b"PAR1 not really"}, {"data_files": "t.parquet"},
                        ["{dir}/t.parquet: could not read it as Parquet", "ArrowInvalid"]),
    "arrow corrupt": ({"t.arrow": b"garbage!!"}, {"data_files": "t.arrow"}, ["{dir}/t.arrow: could not read it as Arrow"]),
    "files with different columns": ({"a.jsonl": GOOD.encode(), "b.jsonl": b'{"question": "q", "answer": "a"}\n'},
                                     {"data_files": ["a.jsonl", "b.jsonl"]},
                                     ["data.train: the files do not all have the same columns", "one source per shape"]),
    "wrong type in a row": ({"t.jsonl": (GOOD + '{"prompt": {"x": 1}, "response": "b"}\n').encode()}, {"data_files": "t.jsonl"},
                            ["data.train ({dir}/t.jsonl): row 1: field 'prompt' must be a string, got dict"]),
    "no file matches": ({}, {"path": "json", "data_files": "missing-*.jsonl"}, ["missing-*.jsonl: data file not found (data.train.data_files)"]),
    "split that does not exist": ({"t.jsonl": GOOD.encode()}, {"data_files": "t.jsonl", "split": "test"},
                                  ["data.train.split 'test': Unknown split \"test\"", "one split named 'train'"]),
    "bad split slice": ({"t.jsonl": GOOD.encode()}, {"data_files": "t.jsonl", "split": "train[:200%]"}, ["data.train.split 'train[:200%]'"]),
    "unknown load_dataset keyword": ({"t.jsonl": GOOD.encode()}, {"data_files": "t.jsonl", "kwargs": {"bogus": 1}},
                                     ["data.train.kwargs: ", "unexpected keyword argument 'bogus'"]),
    "hub dataset unreachable": ({}, {"path": "someone/no-such-dataset"},
                                ["data.train: Couldn't reach 'someone/no-such-dataset'", "builders are json"]),
    "missing fsspec backend": ({}, {"data_files": "s3://bucket/train.jsonl",
                                    "storage_options": {"key": "AKIAEXAMPLE", "secret": "wJalrXUtnFEMIEXAMPLE"}},
                               ["data.train: Install s3fs to access S3", "pip install s3fs"]),
    "from_disk not a dataset": ({"folder/x.txt": b"hi"}, {"from_disk": "folder"}, ["data.train.from_disk: not found", "folder is neither"]),
    "function raises": ({"src.py": b"def rows():\n    raise KeyError('text')\n"}, {"function": "src.py:rows"},
                        ["data.train.function {dir}/src.py:rows raised KeyError ({dir}/src.py, line 2): 'text'", "--debug"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loader_error_is_one_message_naming_the_place(tmp_path, capsys, tok_dir, case):
    files, source, expected = CASES[case]
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    err = prep_fails(tmp_path, capsys, source, expected, tok_dir)
    assert "AKIAEXAMPLE" not in err and "wJalrXUtnFEMIEXAMPLE" not in err


def test_debug_shows_the_library_traceback(tmp_path, tok_dir):
    (tmp_path / "t.csv").write_bytes(b"prompt,response\nx,y\nz,w,v\n")
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tok_dir), "data": {"train": {"data_files": "t.csv"}}})
    with pytest.raises(Exception) as info:
        main(["--debug", "prep", str(cfg)])
    assert "not valid CSV" in str(info.value) and type(info.value.__cause__).__name__ == "DatasetGenerationError"


def test_chat_template_asked_for_without_one(tmp_path, capsys, tok_dir):
    tok = tmp_path / "tok"
    shutil.copytree(tok_dir, tok)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    (tok / "chat_template.jinja").unlink(missing_ok=True)
    (tmp_path / "t.jsonl").write_text(GOOD)
    prep_fails(tmp_path, capsys, {"data_files": "t.jsonl"},
               ["data.prompt_format: chat_template was asked for, but the tokenizer has no chat template"],
               tok, prompt_format="chat_template")


# -- models: the base model's folder and LoRA targets --------------------------------------------

def broken_model(tmp_path: Path, tiny_llama: Path, how: str) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    if how == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage weights":
        weights.write_bytes(b"not safetensors at all")
    elif how == "no weights":
        weights.unlink()
    elif how == "corrupt tokenizer":
        (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab"')
    elif how == "unknown model type":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "model_type": "llamax"}))
    return model


@pytest.mark.parametrize("how, expected", [
    ("truncated weights", "{model}/model.safetensors: the weights file is corrupt or cut short"),
    ("garbage weights", "{model}/model.safetensors: the weights file is corrupt or cut short"),
    ("no weights", "cannot load base_model '{model}': OSError: Error no file named model.safetensors"),
    ("unknown model type", "model type `llamax` but Transformers does not recognize this architecture"),
    ("corrupt tokenizer", "cannot load a tokenizer from '{model}'"),
])
def test_broken_base_model_is_one_message(tmp_path, capsys, tiny_llama, how, expected):
    model = broken_model(tmp_path, tiny_llama, how)
    (tmp_path / "t.jsonl").write_text(GOOD * 4)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(model), "output_dir": "out",
                                               "data": {"train": {"data_files": "t.jsonl"}}, "training": {"max_steps": 1}})
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert expected.format(model=model) in err and "hint:" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "final").exists() and not (tmp_path / "out" / "checkpoints").exists()


def test_lora_target_modules_that_match_nothing(tmp_path, capsys, tiny_llama):
    (tmp_path / "t.jsonl").write_text(GOOD * 4)
    cfg = write_config(tmp_path / "cfg.yaml", {"base_model": str(tiny_llama), "output_dir": "out",
                                               "data": {"train": {"data_files": "t.jsonl"}}, "training": {"max_steps": 1},
                                               "model": {"method": "lora", "lora": {"target_modules": ["qproj"]}}})
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "model.lora.target_modules ['qproj']: Target modules {'qproj'} not found" in err
    assert "'q_proj'" in err  # the names it could have meant


def test_save_to_disk_folder_with_a_missing_split(tmp_path, capsys, tok_dir):
    from datasets import DatasetDict

    DatasetDict({"train": Dataset.from_list([{"prompt": "a", "response": "b"}])}).save_to_disk(str(tmp_path / "saved"))
    prep_fails(tmp_path, capsys, {"from_disk": "saved", "split": "validation"}, ["{dir}/saved: has no split 'validation'; it has ['train']"], tok_dir)


class NoCredentialsError(Exception):  # botocore's name; s3fs is not installed here
    pass


class ClientError(Exception):
    pass


@pytest.mark.parametrize("error, expected", [
    (PermissionError(13, "Permission denied", "/data/t.jsonl"), "data.train: permission denied: /data/t.jsonl"),
    (NoCredentialsError("Unable to locate credentials"), "data.train: access denied by the storage service (NoCredentialsError)"),
    (ClientError("An error occurred (403) when calling the HeadObject operation: Forbidden"), "access denied by the storage service"),
    (FileNotFoundError("s3://bucket/missing.jsonl"), "data.train: not found: s3://bucket/missing.jsonl"),
])
def test_remote_storage_errors_are_translated(error, expected):
    """fsspec backends raise their own types (botocore, gcsfs); the cause chain is searched by name and text."""
    from datasets.exceptions import DatasetGenerationError

    from tunesmith.translate_errors import source_load_error

    try:
        try:
            raise error
        except Exception as inner:
            raise DatasetGenerationError("An error occurred while generating the dataset") from inner
    except Exception as wrapped:
        message = str(source_load_error(wrapped, "data.train", "json", ["s3://bucket/*.jsonl"], "train"))
    assert expected in message and "hint:" in message
    if "access denied" in expected:
        assert "storage_options" in message


def test_a_path_that_looks_like_a_status_code_or_says_split_is_still_not_found(tmp_path, capsys, tok_dir):
    prep_fails(tmp_path, capsys, {"path": "json", "data_files": "memory://run-403/split-401.jsonl"},
               ["data.train: not found: Unable to find 'memory://run-403/split-401.jsonl'"], tok_dir)


@pytest.mark.parametrize("code,needle", [
    ("def fn(row):\n    return {'prompt': row['a'],\n", "{dir}/pre.py, line 2: syntax error: '{{' was never closed"),
    ("x = 1\nraise RuntimeError('no config here')\ndef fn(row):\n    return row\n",
     "importing {dir}/pre.py raised RuntimeError ({dir}/pre.py, line 2): no config here"),
    ("import not_a_real_package_xyz\ndef fn(row):\n    return row\n",
     "importing {dir}/pre.py failed ({dir}/pre.py, line 1): No module named 'not_a_real_package_xyz'"),
    ("def other(row):\n    return row\n", "{dir}/pre.py has no function 'fn'"),
    ("fn = 3\n", "{dir}/pre.py:fn is a int, not a function"),
])
def test_user_code_that_fails_to_load_is_named(tmp_path, capsys, tok_dir, code, needle):
    (tmp_path / "pre.py").write_text(code)
    write_jsonl(tmp_path / "t.jsonl", [{"a": "q", "b": "r"}])
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "output_dir": str(tmp_path / "out"),
                                            "data": {"train": {"data_files": "t.jsonl"}, "preprocessing_fn": "pre.py:fn"}})
    assert main(["prep", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "data.preprocessing_fn: " + needle.format(dir=tmp_path) in err and "Traceback" not in err
