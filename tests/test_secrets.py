"""Credentials in a config never reach a file under the output folder, the printed output or a message."""
import json

import yaml

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config.secrets import MASK, is_secret_key, mask, mask_text, secret_values

S3_KEY, S3_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HUB_TOKEN, URL_PASSWORD = "hf_aBcDeFgHiJkLmNoP", "pa55w0rd-in-url"
SECRETS = [S3_KEY, S3_SECRET, HUB_TOKEN, URL_PASSWORD]


def test_secret_keys_are_whole_credential_words():
    assert all(is_secret_key(k) for k in ("hub_token", "key", "aws_secret_access_key", "password", "api-key", "apiKey", "session_token"))
    assert not any(is_secret_key(k) for k in ("include_tokens_per_second", "max_new_tokens", "tokenizer", "keys_to_ignore", "anon", "push_to_hub"))


def test_mask_lists_what_it_masked_and_keeps_everything_else():
    config = {"data": {"train": {"data_files": "s3://b/x.jsonl", "storage_options": {"key": S3_KEY, "secret": S3_SECRET, "anon": False}}},
              "training": {"hub_token": HUB_TOKEN, "max_steps": 3, "include_tokens_per_second": True},
              "model": {"upload_to": [f"https://me:{URL_PASSWORD}@host/runs?sig=abcd1234&x=1"]}}
    masked, paths = mask(config)
    assert masked["data"]["train"]["storage_options"] == {"key": MASK, "secret": MASK, "anon": False}
    assert masked["training"] == {"hub_token": MASK, "max_steps": 3, "include_tokens_per_second": True}
    assert masked["model"]["upload_to"] == [f"https://me:{MASK}@host/runs?sig={MASK}&x=1"]
    assert paths == ["data.train.storage_options.key", "data.train.storage_options.secret", "training.hub_token", "model.upload_to[0]"]
    assert config["training"]["hub_token"] == HUB_TOKEN  # the input is not changed
    text = mask_text(f"failed with key {S3_KEY} at https://me:{URL_PASSWORD}@host", secret_values(config))
    assert S3_KEY not in text and URL_PASSWORD not in text and text.count(MASK) == 2


def test_no_secret_in_any_output_file_or_the_printed_output(tmp_path, tiny_llama, capfd):
    write_jsonl(tmp_path / "rows.jsonl", [{"prompt": f"Q: {i}\nA: ", "response": f"a{i}"} for i in range(8)])
    upload = tmp_path / "upload"
    cfg = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(tiny_llama), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl", "storage_options": {"key": S3_KEY, "secret": S3_SECRET}}, "max_length": 64},
        "model": {"upload_to": [f"file://{upload}"]},
        "training": {"max_steps": 2, "save_steps": 1, "hub_token": HUB_TOKEN, "logging_steps": 1}})
    assert main(["run", str(cfg)]) == 0
    # and a failing command whose message would quote a secret
    assert main(["prep", str(cfg), f"data.train.data_files=https://me:{URL_PASSWORD}@example.invalid/x.jsonl"]) == 2
    captured = capfd.readouterr()
    printed = captured.out + captured.err
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()] + [p for p in upload.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.name == "training_args.bin" for p in files)
    for secret in SECRETS:
        assert secret not in printed, secret
        for p in files:
            assert secret.encode() not in p.read_bytes(), (secret, p)
    run_config = (tmp_path / "out" / "run_config.yaml").read_text()
    assert "# masked (***): data.train.storage_options.key" in run_config and "# masked (***): training.hub_token" in run_config
    assert yaml.safe_load(run_config)["training"]["hub_token"] == MASK
    saved = json.loads((tmp_path / "out" / "data" / "tunesmith_data.json").read_text())
    assert saved["data_config"]["train"]["storage_options"] == {"key": MASK, "secret": MASK}


def test_seed_style_translation_prints_no_credentials(tmp_path, tiny_llama, capsys):
    write_jsonl(tmp_path / "rows.jsonl", [{"input": "hi", "context": [], "response": "yo"}] * 4)
    cfg = write_config(tmp_path / "dataprep.yaml", {
        "base_model": str(tiny_llama),
        "source_config": {"method": "load_dataset", "kwargs": {"path": "json", "data_files": str(tmp_path / "rows.jsonl"),
                                                               "storage_options": {"key": S3_KEY, "secret": S3_SECRET}}},
        "dataset_writer_config": {"method": "save_to_disk", "kwargs": {"dataset_path": str(tmp_path / "data")}}})
    assert main(["prep", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "source_config (load_dataset) -> data source" in err and "'key': '***'" in err
    assert S3_KEY not in err and S3_SECRET not in err
    report = (tmp_path / "data" / "prep_report.json").read_text()
    assert "translated_from_seed" in report and S3_KEY not in report and S3_SECRET not in report
