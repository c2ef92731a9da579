"""The prompt settings travel with the model: final/ and merged/ carry tunesmith_prompt.json, and
eval, generate and chat on `--model FOLDER` alone prompt the model exactly as training did; a
config, when given, wins, and where it differs from the saved settings that is said."""
import io
import json

import pytest
from datasets import load_from_disk
from transformers import AutoTokenizer

import tunesmith.infer.generate as generate_module
from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.config.schema import DataConfig, PromptFormatConfig
from tunesmith.data.prompt_settings import PROMPT_FILE, differences, prompt_settings, read_settings, settings_text
from tunesmith.data.render import make_renderer
from tunesmith.errors import ConfigError
from tunesmith.infer.chat import chat

GENERATE_IDS = generate_module.generate_ids

PAIRS = [("color of the sky?", "blue"), ("capital of France?", "Paris"), ("2+2?", "4"), ("opposite of hot?", "cold"),
         ("first letter?", "A"), ("largest planet?", "Jupiter"), ("frozen water?", "ice"), ("fox says?", "unknown")]
# Every rendering setting away from its default, so a prompt rendered without them differs.
DATA = {"prompt_format": "alpaca", "columns": {"prompt": "question", "response": "answer"},
        "prompt": {"system_message": "Answer briefly.", "response_template": "Answer: {text}"}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama):
    tmp = tmp_path_factory.mktemp("saved_prompt")
    write_jsonl(tmp / "rows.jsonl", [{"question": q, "answer": a} for q, a in PAIRS])
    cfg = write_config(tmp / "cfg.yaml", {
        "name": "toy", "base_model": str(tiny_llama), "output_dir": "out",
        "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 96, **DATA},
        "training": {"max_steps": 60, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "save_steps": 1000}})
    assert main(["run", str(cfg)]) == 0
    prompts = tmp / "prompts.txt"
    prompts.write_text(json.dumps({"question": PAIRS[1][0]}) + "\n" + PAIRS[2][0] + "\n")  # a JSON row and a typed line
    return tmp, cfg, tmp / "out" / "final", prompts


def generate_cli(monkeypatch, capsys, args: list[str]) -> tuple[int, list[list[int]], list[str], str]:
    """Run `tunesmith generate`, recording the prompt ids it hands to the model."""
    seen = []

    def recording(model, tokenizer, prompts, *rest, **kw):
        seen.extend(prompts)
        return GENERATE_IDS(model, tokenizer, prompts, *rest, **kw)

    monkeypatch.setattr(generate_module, "generate_ids", recording)
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, seen, [json.loads(line)["answer"] for line in out.splitlines() if line.startswith("{")], err


def test_generate_on_the_model_folder_alone_prompts_as_training_did(trained, monkeypatch, capsys, tmp_path):
    tmp, cfg, final, prompts = trained
    assert json.loads((final / PROMPT_FILE).read_text())["prompt_format"]["name"] == "alpaca"
    code, with_config, answers, _ = generate_cli(monkeypatch, capsys, [str(cfg), "--model", str(final), "--prompts", str(prompts)])
    assert code == 0
    monkeypatch.chdir(tmp_path)  # nothing may depend on the config's folder
    code, alone, answers_alone, err = generate_cli(monkeypatch, capsys, ["--model", str(final), "--prompts", str(prompts)])
    assert code == 0, err
    assert alone == with_config and answers_alone == answers
    # ... and they are the masked ids training put before the answer of that row
    row = load_from_disk(str(tmp / "out" / "data"))["train"][1]
    first_trained = next(i for i, label in enumerate(row["labels"]) if label != -100)
    assert alone[0] == row["input_ids"][:first_trained]
    # Without the saved settings the prompt would be another one: the test can tell.
    tok = AutoTokenizer.from_pretrained(final)
    assert alone[1] != make_renderer(DataConfig(), tok).prompt({"prompt": PAIRS[2][0]})[0]


def test_a_config_wins_and_its_differences_are_said(trained, monkeypatch, capsys):
    tmp, cfg, final, prompts = trained
    _, saved_ids, _, err = generate_cli(monkeypatch, capsys, [str(cfg), "--model", str(final), "--prompts", str(prompts)])
    assert "differ" not in err  # the training config matches what was saved: nothing to say
    code, ids, _, err = generate_cli(monkeypatch, capsys, [str(cfg), "data.prompt.system_message=Be verbose.",
                                                           "data.prompt_format=chatml", "--model", str(final),
                                                           "--prompts", str(prompts)])
    assert code == 0
    assert f"differ from those the model was saved with ({final / PROMPT_FILE})" in err
    assert "data.prompt_format: 'chatml' in the config, 'alpaca' saved with the model" in err
    assert "data.prompt.system_message: 'Be verbose.' in the config, 'Answer briefly.' saved with the model" in err
    assert ids != saved_ids and "<|im_start|>" in AutoTokenizer.from_pretrained(final).decode(ids[1])


def test_eval_and_chat_on_the_model_folder_alone(trained, capsys):
    tmp, cfg, final, _ = trained
    rows = str(tmp / "rows.jsonl")
    assert main(["eval", str(cfg), "--model", str(final), "--data", rows, "--label", "with_config", "--max-new-tokens", "6"]) == 0
    assert main(["eval", "--model", str(final), "--data", rows, "--max-new-tokens", "6"]) == 0
    with_config = json.loads((tmp / "out" / "eval" / "with_config" / "metrics.json").read_text())
    alone = json.loads((tmp / "out" / "eval" / "final" / "metrics.json").read_text())  # beside final/, as with the config
    for key in ("eval_loss", "eval_tokens", "exact_match", "rouge_l", "rows"):
        assert alone[key] == with_config[key], key
    assert alone["rows"] == len(PAIRS) and alone["eval_tokens"] > 0
    capsys.readouterr()
    assert main(["eval", "--model", str(final)]) == 2
    assert "eval without a config needs --data FILE" in capsys.readouterr().err

    typed = "capital of France?\n2+2?\n"
    out_alone, out_config = io.StringIO(), io.StringIO()
    history = chat(None, str(final), 6, io.StringIO(typed), out_alone)
    chat(load_config(cfg), str(final), 6, io.StringIO(typed), out_config)
    assert out_alone.getvalue() == out_config.getvalue() and len(history) == 4


def test_a_folder_without_saved_settings_asks_for_the_config(tiny_llama, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    assert main(["generate", "--model", str(tiny_llama), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert f"no {PROMPT_FILE}, so the prompt format this model was trained with is unknown" in err
    assert "pass the training config" in err and "Traceback" not in err
    assert main(["chat"]) == 2
    assert "no config and no --model" in capsys.readouterr().err


def test_a_saved_preprocessing_function_that_is_gone_is_named(tiny_llama, tmp_path, capsys):
    """The settings name the function by its path at training time; a moved model says which file
    needs it, and typed prompts (which skip it) still work."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    gone = tmp_path / "gone.py"
    (folder / PROMPT_FILE).write_text(settings_text(DataConfig(preprocessing_fn=f"{gone}:fn")))
    prompts = tmp_path / "p.txt"
    prompts.write_text("typed line\n")
    assert main(["generate", "--model", str(folder), "--prompts", str(prompts), "--max-new-tokens", "2"]) == 0
    prompts.write_text('{"question": "a row"}\n')
    assert main(["generate", "--model", str(folder), "--prompts", str(prompts), "--max-new-tokens", "2"]) == 2
    assert f"{gone}: file not found (preprocessing_fn in {folder / PROMPT_FILE})" in capsys.readouterr().err


def test_settings_round_trip_and_builtins_are_spelled_out(tmp_path):
    data = DataConfig.model_validate({**DATA, "assistant_turns": "last"})
    (tmp_path / PROMPT_FILE).write_text(settings_text(data))
    saved = read_settings(tmp_path)
    assert differences(data, saved) == []
    # data.chat.thinking: auto is settled when saved (off: no prepared data with reasoning here)
    assert saved.chat.thinking == "off" and prompt_settings(saved) == prompt_settings(
        data.model_copy(update={"chat": data.chat.model_copy(update={"thinking": "off"})}))
    # the markers are in the file, not only the name: a later change to the built-in cannot change this model
    written = json.loads((tmp_path / PROMPT_FILE).read_text())
    assert written["prompt_format"]["response_prefix"] == "### Response:\n" and written["tunesmith_prompt_version"] == 1
    assert isinstance(saved.prompt_format, PromptFormatConfig) and saved.assistant_turns == "last"
    assert read_settings(tmp_path / "nowhere") is None
    custom = data.model_copy(update={"prompt_format": saved.prompt_format.model_copy(update={"stop": ["###"]})})
    assert differences(custom, saved) == ["data.prompt_format.stop: ['###'] in the config, ['### Instruction:'] saved with the model"]


@pytest.mark.parametrize("text, says", [
    ("{not json", "not valid JSON"),
    ('{"tunesmith_prompt_version": 99, "prompt_format": "plain"}', "tunesmith_prompt_version 99 is not one this tunesmith reads"),
    ('{"tunesmith_prompt_version": 1, "prompt_format": "plain", "assistant_turns": "some"}', "invalid prompt setting assistant_turns"),
])
def test_a_damaged_settings_file_is_named(tmp_path, text, says):
    (tmp_path / PROMPT_FILE).write_text(text)
    with pytest.raises(ConfigError) as e:
        read_settings(tmp_path)
    assert str(tmp_path / PROMPT_FILE) in str(e.value) and says in str(e.value)
