"""Fine-tuning on tiny random-init Llama models: learning, LoRA, resume, accumulation, kill, seed configs."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.data.render import make_renderer
from tunesmith.infer.generate import generate

PAIRS = [("color of the sky?", "blue"), ("capital of France?", "Paris"), ("2+2?", "4"), ("opposite of hot?", "cold"),
         ("first letter?", "A"), ("largest planet?", "Jupiter"), ("frozen water?", "ice"), ("fox says?", "unknown")]
ROWS = [{"prompt": f"Q: {q}\nA: ", "response": a} for q, a in PAIRS]


def setup_run(tmp_path, base_model, rows=ROWS, training=None, model=None, **data):
    write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = {"name": "toy", "base_model": str(base_model), "output_dir": "out",
           "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64, **data},
           "training": {"max_steps": 60, "learning_rate": 3e-3, "per_device_train_batch_size": 8,
                        "logging_steps": 10, "save_steps": 1000, **(training or {})}}
    if model:
        cfg["model"] = model
    return write_config(tmp_path / "cfg.yaml", cfg)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tiny_llama_learns_toy_task_and_final_model_answers(tmp_path, tiny_llama):
    cfg_path = setup_run(tmp_path, tiny_llama)
    assert main(["run", str(cfg_path)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < 0.25 * summary["first_loss"]
    assert summary["trained_tokens"] > 0 and summary["trained_tokens_per_second"] > 0
    for name in ("metrics.jsonl", "loss.png", "run_config.yaml", "final/config.json", "final/tokenizer.json", "final/generation_config.json"):
        assert (out / name).is_file(), name
    tok = AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    answers = generate(model, tok, make_renderer(load_config(cfg_path).data, tok), [{"prompt": r["prompt"]} for r in ROWS], max_new_tokens=8)
    assert answers == [a for _, a in PAIRS]


def test_lora_trains_only_adapters_and_merged_matches(tmp_path, tiny_llama):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 20, "learning_rate": 1e-2},
                         model={"method": "lora", "merge": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}})
    assert main(["run", str(cfg_path)]) == 0
    out = tmp_path / "out"
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = PeftModel.from_pretrained(base, out / "final")
    adapter = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert adapter and any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    for k, v in peft_model.get_base_model().state_dict().items():  # base weights untouched
        plain = k.replace("base_layer.", "")
        if "lora_" not in k and plain in base_state:
            assert torch.equal(v, base_state[plain]), k
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    assert (out / "merged" / "tunesmith_prompt.json").read_text() == (out / "final" / "tunesmith_prompt.json").read_text()
    ids = torch.tensor([[1, 54, 31, 226, 72, 84, 81]])
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-4)
    trainable = json.loads((out / "summary.json").read_text())["method"]
    assert trainable == "lora"


def test_resume_gives_the_same_losses(tmp_path, tiny_llama):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 10, "save_steps": 5, "logging_steps": 1,
                                                         "per_device_train_batch_size": 2, "save_total_limit": 5})
    assert main(["run", str(cfg_path)]) == 0
    out = tmp_path / "out"
    straight = [r["loss"] for r in metrics(out) if "loss" in r]
    assert len(straight) == 10
    import shutil

    shutil.rmtree(out / "checkpoints" / "checkpoint-10")
    assert main(["train", str(cfg_path), "model.resume=auto"]) == 0
    resumed = [r for r in metrics(out) if "loss" in r][10:]
    assert [r["step"] for r in resumed] == [6, 7, 8, 9, 10]
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("checkpoint-5")
    for a, b in zip(straight[5:], [r["loss"] for r in resumed]):
        assert abs(a - b) < 1e-4


def first_update(tmp_path, tiny_llama, **training):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 1, "optim": "sgd", "learning_rate": 0.5,
                                                         "bf16": False, "max_grad_norm": 1e9, **training})
    assert main(["run", str(cfg_path)]) == 0
    return AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").state_dict()


def test_gradient_accumulation_equivalence(tmp_path, tiny_llama):
    # Rows of different answer lengths: a per-micro-batch mean would weight tokens differently.
    one = first_update(tmp_path / "a", tiny_llama, per_device_train_batch_size=8)
    acc = first_update(tmp_path / "b", tiny_llama, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    start = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the step did something
    assert max((one[k] - acc[k]).abs().max().item() for k in one) < 1e-5


def test_eval_loss_and_perplexity_logged(tmp_path, tiny_llama):
    rows = ROWS * 3
    cfg_path = setup_run(tmp_path, tiny_llama, rows, training={"max_steps": 10, "eval_steps": 5, "logging_steps": 5},
                         validation_split=0.25)
    assert main(["run", str(cfg_path)]) == 0
    evals = [r for r in metrics(tmp_path / "out") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    assert all(abs(r["eval_perplexity"] - math.exp(r["eval_loss"])) < 1e-2 * r["eval_perplexity"] for r in evals)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["eval_loss"] is not None and summary["eval_perplexity"] > 1


def test_killed_run_resumes_and_finishes(tmp_path, tiny_llama):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 100000, "save_steps": 3, "logging_steps": 1,
                                                         "per_device_train_batch_size": 2})
    assert main(["prep", str(cfg_path)]) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith.finetune", str(cfg_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "out" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "trainer_state.json").exists() for p in ckpts.glob("checkpoint-*")):
        time.sleep(0.05)
    time.sleep(0.3)  # let it get part-way into later steps or a later save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = max(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert main(["train", str(cfg_path), "model.resume=auto", f"training.max_steps={done + 4}"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == done + 4 and "checkpoint-" in summary["resumed_from"]
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()


def test_tokenizer_mismatch_is_refused(tmp_path, tiny_llama, tok_dir, capsys):
    cfg_path = setup_run(tmp_path, tiny_llama)
    assert main(["prep", str(cfg_path), f"tokenizer={tok_dir}"]) == 0  # data made with another tokenizer
    assert main(["train", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "was prepared with a different tokenizer" in err and "adds_bos: data False vs model True" in err


def test_unknown_training_key_fails_before_any_work(tmp_path, tiny_llama, capsys):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"warmup_ratio": 0.1})
    assert main(["run", str(cfg_path)]) == 2
    assert "training.warmup_ratio: unknown key; did you mean 'warmup_steps'?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_qlora_trains_saves_merges_and_loads_on_a_cpu(tmp_path, tiny_llama):
    """bitsandbytes 0.50 runs 4-bit NF4 layers on a CPU: QLoRA's whole path runs here, not only on a GPU."""
    pytest.importorskip("bitsandbytes")
    from tunesmith.train.model import cpu_4bit_runs

    if not cpu_4bit_runs():
        pytest.skip("this bitsandbytes has no 4-bit kernels for this CPU")
    cfg_path = setup_run(tmp_path, tiny_llama, model={"method": "qlora", "merge": True},
                         training={"max_steps": 20, "logging_steps": 5, "learning_rate": 1e-2})
    assert main(["run", str(cfg_path)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"]
    assert (out / "final" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")  # the adapter in a full-precision base, not 4-bit
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    assert torch.isfinite(merged(torch.tensor([[1, 5, 9]])).logits).all()


def test_qlora_without_kernels_for_the_machine_is_a_clear_error(tmp_path, tiny_llama, capsys, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from tunesmith.train import model

    monkeypatch.setattr(model.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model, "cpu_4bit_runs", lambda: False)
    assert main(["run", str(setup_run(tmp_path, tiny_llama, model={"method": "qlora"}))]) == 2
    assert "has no 4-bit kernels for this CPU and there is no CUDA GPU" in capsys.readouterr().err
    assert main(["run", str(setup_run(tmp_path / "b", tiny_llama, model={"method": "qlora", "quantization_bits": 8}))]) == 2
    assert "model.quantization_bits 8 needs a CUDA GPU" in capsys.readouterr().err


def test_seed_style_configs_run_unchanged(tmp_path, tiny_llama):
    Dataset.from_list([{"input": f"A: {q} B: {a}", "context": [], "response": f"They talk about {a}."} for q, a in PAIRS]
                      ).save_to_disk(str(tmp_path / "raw"))
    write_config(tmp_path / "dataprep.yaml", {
        "base_model": str(tiny_llama),
        "source_config": {"method": "load_from_disk", "kwargs": {"dataset_path": str(tmp_path / "raw")}},
        "prompt_config": {"method": "Prompt", "kwargs": {"system_message": "Please summarize the following conversation",
                                                         "input_template": "Conversation: {text}\n", "response_template": "Summary: {text}"}},
        "prompt_format_config": {"method": "Llama2Format"},
        "dataset_writer_config": {"method": "save_to_disk", "kwargs": {"dataset_path": str(tmp_path / "train")}},
        "chunksize": 256})
    write_config(tmp_path / "finetune.yaml", {
        "base_model": str(tiny_llama),
        "train_dataset_config": {"method": "load_from_disk", "kwargs": {"dataset_path": str(tmp_path / "train")}},
        "training_arguments": {"max_steps": 4, "gradient_checkpointing": False},
        "lora_config": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "task_type": "CAUSAL_LM"},
        "local_output": str(tmp_path / "output"), "torch_dtype": "float32"})
    prep = subprocess.run([sys.executable, "-m", "tunesmith.dataprep", str(tmp_path / "dataprep.yaml")], capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr
    assert "translated:" in prep.stderr and "Llama2Format" in prep.stderr
    row = __import__("datasets").load_from_disk(str(tmp_path / "train"))[0]  # one Dataset, as the framework writes
    assert row["full_text"].startswith("<s>[INST] <<SYS>>\nPlease summarize the following conversation\n<</SYS>>\n\nConversation: ")
    tune = subprocess.run([sys.executable, "-m", "tunesmith.finetune", str(tmp_path / "finetune.yaml")], capture_output=True, text=True)
    assert tune.returncode == 0, tune.stderr[-3000:]
    assert "lora_config -> model.method lora" in tune.stderr
    summary = json.loads((tmp_path / "output" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["method"] == "lora"
    assert (tmp_path / "output" / "final" / "adapter_config.json").is_file()


def test_train_before_prep_says_what_to_do(tmp_path, tiny_llama, capsys):
    assert main(["train", str(setup_run(tmp_path, tiny_llama))]) == 2
    err = capsys.readouterr().err
    assert "prepared data not found" in err and "run `tunesmith prep CONFIG` first" in err


def test_resume_skips_checkpoints_cut_short_while_saving(tmp_path, capsys):
    from tunesmith.train.checkpoints import MARKER, latest_complete_checkpoint

    # The marker is written last, after every process finished its part of the checkpoint.
    for step, marker in ((5, "{}"), (10, "{}"), (15, None), (20, '{"trunc')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        if marker is not None:
            (tmp_path / f"checkpoint-{step}" / MARKER).write_text(marker)
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "skipping checkpoint-20" in capsys.readouterr().err
    assert latest_complete_checkpoint(tmp_path / "none") is None


def test_report_to_an_integration_that_is_not_installed_is_a_clear_error(tmp_path, tiny_llama, capsys):
    from transformers.integrations import get_available_reporting_integrations

    missing = next(n for n in ("tensorboard", "mlflow", "wandb") if n not in get_available_reporting_integrations())
    cfg_path = setup_run(tmp_path, tiny_llama, training={"report_to": [missing]})
    assert main(["run", str(cfg_path)]) == 2
    assert f"training.report_to: {missing} is not installed; pip install {missing}" in capsys.readouterr().err
    cfg_path = setup_run(tmp_path, tiny_llama, training={"report_to": "tensorbored"})
    assert main(["run", str(cfg_path)]) == 2
    assert "unknown integration 'tensorbored'" in capsys.readouterr().err


def test_gpu_defaults_take_flash_attention_and_liger_only_where_they_run():
    from tunesmith.config.training_keys import _liger_problems
    from tunesmith.train.arguments import default_liger
    from tunesmith.train.model import resolve_attn_implementation

    bf16, fp32 = torch.bfloat16, torch.float32
    assert resolve_attn_implementation("auto", bf16, cuda=True, flash_installed=True) == "flash_attention_2"
    assert resolve_attn_implementation("auto", fp32, cuda=True, flash_installed=True) == "sdpa"  # flash needs bf16/fp16
    assert resolve_attn_implementation("auto", bf16, cuda=True, flash_installed=False) == "sdpa"
    assert resolve_attn_implementation("auto", bf16, cuda=False, flash_installed=True) == "sdpa"
    assert resolve_attn_implementation("eager", bf16, cuda=True, flash_installed=True) == "eager"
    assert default_liger(cuda=True, installed=True) and not default_liger(cuda=True, installed=False)
    assert not default_liger(cuda=False, installed=True)
    assert "pip install liger-kernel" in _liger_problems(True, cuda=True, installed=False)[0]
    assert _liger_problems(True, cuda=True, installed=True) == [] and _liger_problems(False, cuda=False) == []


def test_auto_attention_on_cpu_trains_with_sdpa_and_liger_asked_for_without_gpu_is_a_clear_error(tmp_path, tiny_llama, capsys):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"use_liger_kernel": True})
    assert main(["run", str(cfg_path)]) == 2
    assert "training.use_liger_kernel: Liger's kernels need a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "out" / "final").exists()
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 2})
    assert main(["run", str(cfg_path)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["attention"] == "sdpa" and summary["attention_per_example"] and summary["liger_kernels"] is False
    # every speed-up the registry applied, and why the others were not
    assert summary["speedups"]["applied"] == ["trained_positions_loss", "varlen_attention", "norm_casts", "swiglu"]
    assert summary["speedups"]["skipped"] == {
        "liger": "needs a CUDA GPU",
        "release_memory": "gradient checkpointing is off (activations stay until the backward pass)"}
    assert summary["loss"] == "trained_positions"


def test_token_counts_are_the_same_with_dataloader_workers(tmp_path, tiny_llama):
    """The counts come from the batches the Trainer receives, so collating in worker processes changes nothing."""
    summaries = []
    for workers in (0, 2):
        cfg_path = setup_run(tmp_path / str(workers), tiny_llama, training={
            "max_steps": 3, "per_device_train_batch_size": 2, "logging_steps": 1, "dataloader_num_workers": workers})
        assert main(["run", str(cfg_path)]) == 0
        summaries.append(json.loads((tmp_path / str(workers) / "out" / "summary.json").read_text()))
    inline, workers = summaries
    assert inline["trained_tokens"] > 0 and inline["tokens"] > inline["trained_tokens"]
    assert (workers["trained_tokens"], workers["tokens"]) == (inline["trained_tokens"], inline["tokens"])


def test_data_from_an_older_identity_record_is_accepted():
    from tunesmith.data.identity import same_tokenizer

    current = {"vocab_size": 10, "vocab_sha256": "ab", "bos_token_id": 1, "eos_token_id": 2, "adds_bos": True}
    older = {k: v for k, v in current.items() if k != "adds_bos"}
    assert same_tokenizer(older, current) == []
    assert same_tokenizer({**older, "eos_token_id": 3}, current) == ["eos_token_id: data 3 vs model 2"]


def test_models_outside_the_trained_token_path_keep_the_trainers_loss_scaling(tmp_path, tok_dir):
    """GPT-2 takes the Trainer's own loss: accumulation must still give the same update."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunesmith.train.loss import supports_trained_positions_loss

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    assert not supports_trained_positions_loss(gpt2)
    gpt2.save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    one = first_update(tmp_path / "a", tmp_path / "gpt2", per_device_train_batch_size=8)
    acc = first_update(tmp_path / "b", tmp_path / "gpt2", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert max((one[k] - acc[k]).abs().max().item() for k in one) < 1e-5


def test_length_grouped_sampling_trains(tmp_path, tiny_llama):
    cfg_path = setup_run(tmp_path, tiny_llama, training={"max_steps": 4, "per_device_train_batch_size": 2,
                                                         "train_sampling_strategy": "group_by_length"})
    assert main(["run", str(cfg_path)]) == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 4


def test_length_column_for_grouped_sampling():
    from tunesmith.train.run import training_columns

    ds = Dataset.from_dict({"input_ids": [[1, 2, 3], [4]], "labels": [[1, 2, 3], [4]], "full_text": ["a", "b"]})
    assert training_columns(ds)["input_ids"] == [[1, 2, 3], [4]] and "length" not in training_columns(ds).column_names
    assert training_columns(ds, "group_by_length")["length"] == [3, 1]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_weights_train_save_and_merge_on_a_cpu(tmp_path, tiny_llama, method):
    """bf16 *weights* (model.dtype), not only autocast, through training, saving and merging: the
    path a GPU run takes, checked here on the CPU."""
    cfg = setup_run(tmp_path, tiny_llama, model={"dtype": "bfloat16", "method": method, "merge": method == "lora"},
                    training={"max_steps": 12, "logging_steps": 4, "learning_rate": 1e-2})
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"]
    folder = out / ("merged" if method == "lora" else "final")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()
