"""Every path a user names is checked before any work, and a bad one ends in one message naming
the key or flag (exit 2, no traceback, nothing created)."""
import pytest

from helpers import write_config, write_jsonl
from tunesmith.cli import main


@pytest.fixture
def setup(tmp_path, tok_dir):
    write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b"}])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "folder").mkdir()
    cfg = write_config(tmp_path / "c.yaml", {"base_model": str(tok_dir), "output_dir": str(tmp_path / "out"),
                                            "data": {"train": {"data_files": "t.jsonl"}}})
    return tmp_path, cfg


CASES = [
    (["prep", "{cfg}", "output_dir={dir}/afile/out"], "output_dir: {dir}/afile/out cannot be created: {dir}/afile is a file, not a folder"),
    (["check", "{cfg}", "output_dir={dir}/afile"], "output_dir: {dir}/afile is a file"),
    (["prep", "{cfg}", "data.output={dir}/afile/data"], "data.output: {dir}/afile/data cannot be created"),
    (["prep", "{cfg}", "output_dir=/proc/tunesmith-out"], "output_dir: /proc/tunesmith-out cannot be written: /proc:"),
    (["generate", "--model", "{dir}/folder", "--prompts", "{dir}/missing.txt"], "--prompts: {dir}/missing.txt: file not found"),
    (["eval", "{cfg}", "--data", "{dir}/folder"], "--data: {dir}/folder is a folder, not a file"),
    (["chat", "--model", "{dir}/nowhere"], "--model: {dir}/nowhere: folder not found"),
    (["merge", "{cfg}", "--adapter", "{dir}/afile"], "--adapter: {dir}/afile: not a folder"),
    (["report", "{cfg}", "--out", "{dir}/folder"], "--out: {dir}/folder is a folder, not a file"),
    (["report", "{cfg}", "--out", "{dir}/afile/r.html"], "--out: {dir}/afile/r.html cannot be created: {dir}/afile is a file"),
    (["chat", "{cfg}", "--tools", "{dir}/missing.json"], "--tools: {dir}/missing.json: file not found"),
]


@pytest.mark.parametrize("argv,message", CASES, ids=[" ".join(a[:1] + a[2:3]) for a, _ in CASES])
def test_bad_paths_are_named_before_any_work(setup, capsys, argv, message):
    tmp_path, cfg = setup
    assert main([a.format(cfg=cfg, dir=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(dir=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob(".tunesmith-probe-*"))


def test_export_of_a_model_folder_into_a_new_output_dir(setup, tiny_llama):
    """Found by tests/test_cli_property.py: export with --model before the run's output_dir existed."""
    tmp_path, cfg = setup
    assert main(["export", str(cfg), "--model", str(tiny_llama)]) == 0
    assert (tmp_path / "out" / "export" / "run-f16.gguf").is_file()
    assert not list((tmp_path / "out").glob(".export-merge-*"))
