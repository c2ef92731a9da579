"""llm-foundry fine-tuning YAMLs run unchanged: each translation rule, each refused key, and the
local-dataset example end to end from the folder foundry's quick start runs it in."""
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.config.compat import foundry_rules as rules
from tunesmith.config.compat.interpolate import interpolate
from tunesmith.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llm_foundry"
YAML = "finetune_example/gpt2-arc-easy--cpu.yaml"


@pytest.fixture
def foundry_dir(tmp_path, monkeypatch):
    """A copy of the example's scripts/train stand-in, as the working directory (train.jsonl a real file)."""
    work = tmp_path / "train"
    shutil.copytree(EXAMPLE, work, symlinks=False)
    monkeypatch.chdir(work)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RUN_NAME", raising=False)
    return work


def example_raw() -> dict:
    return yaml.safe_load((EXAMPLE / YAML).read_text())


def write(folder: Path, raw: dict) -> Path:
    path = folder / "finetune_example" / "edited.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---- rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,trainer", [
    ("1ep", {"num_train_epochs": 1}), (3, {"num_train_epochs": 3}), ("100ba", {"max_steps": 100}),
    ("800sp", {"max_steps": 100}), ("801sp", {"max_steps": 101}),
])
def test_durations(value, trainer):
    assert rules.duration_to_trainer(rules.parse_duration(value, "max_duration"), 8)[0] == trainer


@pytest.mark.parametrize("value", ["1000tok", "0.5ep", "ten", True])
def test_durations_the_trainer_cannot_stop_on_are_refused(value):
    with pytest.raises(ConfigError, match="max_duration"):
        rules.duration_to_trainer(rules.parse_duration(value, "max_duration"), 8)


@pytest.mark.parametrize("global_batch,micro,procs,per_device,accum", [
    (8, 8, 1, 8, 1), (64, 4, 1, 4, 16), (64, 4, 4, 4, 4), (8, 16, 1, 8, 1), (12, 5, 1, 4, 3), (8, "auto", 2, 4, 1),
])
def test_batch_arithmetic(global_batch, micro, procs, per_device, accum):
    plan = rules.batch_plan(global_batch, micro, procs)
    assert (plan.per_device, plan.accumulation) == (per_device, accum)
    assert plan.per_device * plan.accumulation * procs == global_batch  # the same samples per optimizer step


def test_global_batch_must_divide_over_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        rules.batch_plan(8, 8, rules.world_size())


def test_decoupled_weight_decay_shrinks_weights_like_foundry():
    """One DecoupledAdamW step shrinks a weight by (1 - wd * lr_t / lr_0); torch's AdamW by (1 - lr_t * wd')."""
    lr, wd = 6e-4, 1e-5
    converted, _ = rules.decoupled_weight_decay(wd, lr)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.zeros(3)  # no gradient: only the decay moves the weight
    opt = torch.optim.AdamW([p], lr=lr * 0.5, weight_decay=converted)  # the schedule at half the peak
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - wd * 0.5), rtol=0, atol=1e-9)


def composer_multiplier(name: str, step: int, warmup: int, total: int, alpha: float) -> float:
    """Composer's schedules, written from their documented formulas (t in batches)."""
    peak = alpha if name == "constant_with_warmup" else 1.0  # the constant schedule warms up to alpha
    if step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / (total - warmup)) if total > warmup else 0.0
    if name == "cosine_with_warmup":
        return alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac))
    if name == "linear_decay_with_warmup":
        return 1.0 + frac * (alpha - 1.0)
    return alpha


@pytest.mark.parametrize("name,alpha,t_warmup", [("cosine_with_warmup", 0.1, "10ba"), ("cosine_with_warmup", 0.0, "0.25dur"),
                                                 ("linear_decay_with_warmup", 0.2, "5ba"), ("constant_with_warmup", 0.5, "8ba"),
                                                 ("linear_decay_with_warmup", 0.0, "24sp")])
def test_schedules_follow_composer(name, alpha, t_warmup):
    from transformers import get_scheduler

    lr, total = 1e-3, 40
    key = "alpha" if name == "constant_with_warmup" else "alpha_f"
    out, _ = rules.schedule({"name": name, "t_warmup": t_warmup, key: alpha}, lr, rules.parse_duration("40ba", "d"), 4)
    warmup = out["warmup_steps"] if out["warmup_steps"] >= 1 else math.ceil(total * out["warmup_steps"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=out.get("learning_rate", lr))
    sched = get_scheduler(out["lr_scheduler_type"], opt, num_warmup_steps=warmup, num_training_steps=total,
                          scheduler_specific_kwargs=out.get("lr_scheduler_kwargs"))
    for step in range(total):
        want = lr * composer_multiplier(name, step, warmup, total, alpha)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, abs=1e-12), step
        opt.step()
        sched.step()


def test_interpolation_types_variables_rescue_and_env(monkeypatch):
    monkeypatch.setenv("RUN_NAME", "from-env")
    notes: list[str] = []
    out = interpolate({"variables": {"global_seed": 17, "n": "${max_seq_len}"}, "max_seq_len": 512, "seed": "${global_seed}",
                       "a": {"b": "${variables.n}"}, "s": "len-${max_seq_len}", "r": "${oc.env:RUN_NAME}"}, notes)
    assert out["seed"] == 17 and out["a"]["b"] == 512 and out["s"] == "len-512" and out["r"] == "from-env"
    assert len(notes) == 1 and "${global_seed} -> variables.global_seed = 17" in notes[0] and "no longer resolves" in notes[0]
    with pytest.raises(ConfigError, match=r"seed: \$\{nope\} points at no key"):
        interpolate({"seed": "${nope}"}, [])
    with pytest.raises(ConfigError, match="refers to itself"):
        interpolate({"a": "${b}", "b": "${a}"}, [])


# ---- translation and refusals ------------------------------------------------------------------

def test_example_translation(foundry_dir, tiny_llama):
    cfg = load_config(YAML, [f"model.pretrained_model_name_or_path={tiny_llama}"])
    assert cfg.compat_source == "llm-foundry" and cfg.base_model == str(tiny_llama) and cfg.tokenizer is None
    t = cfg.training
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"], t["num_train_epochs"]) == (8, 1, 1)
    assert t["lr_scheduler_type"] == "cosine_with_min_lr" and t["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert (t["warmup_steps"], t["learning_rate"], t["adam_beta2"], t["weight_decay"]) == (100, 6e-4, 0.95, 0.0)
    assert (t["max_grad_norm"], t["bf16"], t["seed"], t["dataloader_drop_last"], t["logging_steps"]) == (1.0, False, 17, True, 1)
    assert cfg.data.train.data_dir == str(foundry_dir / "finetune_example")
    assert cfg.data.preprocessing_fn == f"{foundry_dir / 'finetune_example' / 'preprocessing.py'}:multiple_choice"
    assert cfg.data.max_length == 512 and cfg.model.method == "full" and cfg.output_dir == str(foundry_dir / "outputs" / "gpt2-arc-easy--cpu")
    notes = "\n".join(cfg.seed_compat)
    assert "ignored (foundry logging" in notes and "callbacks" in notes and "variables.global_seed" in notes


def test_lora_eval_loader_checkpoints_and_loggers(foundry_dir, tiny_llama, monkeypatch):
    raw = example_raw()
    raw["model"]["peft_config"] = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj"]}
    raw["eval_loader"] = {**raw["train_loader"], "dataset": {**raw["train_loader"]["dataset"], "split": "train[:10]", "shuffle": False}}
    raw.update(eval_interval="5ba", eval_first=True, save_folder="./{run_name}/checkpoints", save_interval="4ba",
               save_num_checkpoints_to_keep=1, autoresume=True, device_train_microbatch_size=2, run_name="exp1",
               max_duration="24sp", loggers={"tensorboard": {}})
    raw["scheduler"] = {"name": "linear_decay_with_warmup", "t_warmup": "0.1dur", "alpha_f": 0.5}
    monkeypatch.setattr("tunesmith.config.training_keys._report_to_problems", lambda r: [])
    cfg = load_config(write(foundry_dir, raw), [f"model.pretrained_model_name_or_path={tiny_llama}"])
    t = cfg.training
    assert cfg.model.method == "lora" and cfg.model.lora.r == 4 and cfg.model.lora.target_modules == ["q_proj"]
    assert cfg.data.eval.split == "train[:10]" and (t["eval_strategy"], t["eval_steps"], t["eval_on_start"]) == ("steps", 5, True)
    assert cfg.output_dir == str(foundry_dir / "exp1" / "checkpoints") and (t["save_steps"], t["save_total_limit"]) == (4, 1)
    assert cfg.model.resume == "auto" and t["report_to"] == ["tensorboard"] and t["max_steps"] == 3
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (2, 4)
    assert t["lr_scheduler_type"] == "polynomial" and t["lr_scheduler_kwargs"] == {"lr_end": 3e-4, "power": 1.0}


@pytest.mark.parametrize("edit,needle", [
    ({"load_path": "./ckpt/latest-rank0.pt"}, "load_path: cannot be honoured"),
    ({"model": {"name": "mpt_causal_lm", "pretrained_model_name_or_path": "x"}}, "model.name: 'mpt_causal_lm' is not a Hugging Face"),
    ({"optimizer": {"name": "decoupled_lionw", "lr": 1e-4}}, "optimizer.name: 'decoupled_lionw' has no equivalent"),
    ({"scheduler": {"name": "inv_sqrt_with_warmup", "t_warmup": "10ba"}}, "scheduler.name: 'inv_sqrt_with_warmup'"),
    ({"algorithms": {"gradient_clipping": {"clipping_type": "norm"}, "alibi": {}}}, r"algorithms: \['alibi'\] have no equivalent"),
    ({"algorithms": {"gradient_clipping": {"clipping_type": "adaptive"}}}, "clipping_type: 'adaptive'"),
    ({"train_loader.dataset.remote": "s3://bucket/mds"}, "train_loader.dataset.remote: MDS streaming"),
    ({"train_loader.dataset.decoder_only_format": False}, "decoder_only_format: false"),
    ({"train_loader.dataset.target_prompts": "length>=10"}, "target_prompts: 'length>=10'"),
    ({"precision": "amp_fp8"}, "precision: 'amp_fp8'"),
    ({"max_duration": "1000tok"}, "max_duration: 1000tok is in tokens"),
    ({"scheduler": {"name": "cosine_with_warmup", "t_warmup": "1ep"}, "max_duration": "100ba"}, "t_warmup: '1ep' cannot be converted"),
    ({"model.pretrained": False}, "model.pretrained: false"),
    ({"tokenizer.kwargs.padding_side": "left"}, r"tokenizer.kwargs: \['padding_side'\]"),
    ({"loggers": {"mosaicml": {}}}, "loggers.mosaicml: no Trainer integration"),
    ({"global_train_batch_sise": 8}, r"unknown key\(s\) \['global_train_batch_sise'\]"),
])
def test_refused_keys_stop_before_any_work_naming_the_key(foundry_dir, capsys, edit, needle):
    raw = example_raw()
    for key, value in edit.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    path = write(foundry_dir, raw)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tunesmith: error:" in err and "Traceback" not in err
    assert re.search(needle, err), err
    assert not (foundry_dir / "outputs").exists()  # nothing was prepared or trained


def test_fsdp_config_is_ignored_on_one_process_refused_on_many(foundry_dir, tiny_llama, monkeypatch):
    raw = {**example_raw(), "fsdp_config": {"sharding_strategy": "FULL_SHARD"}}
    path = write(foundry_dir, raw)
    cfg = load_config(path, [f"model.pretrained_model_name_or_path={tiny_llama}"])
    assert any("ignored: fsdp_config" in n for n in cfg.seed_compat)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="fsdp_config"):
        load_config(path, [f"model.pretrained_model_name_or_path={tiny_llama}"])


def test_preprocessing_module_resolves_from_the_working_directory(foundry_dir, tmp_path, monkeypatch, tiny_llama):
    monkeypatch.chdir(tmp_path)  # not where finetune_example/ lives
    cfg = load_config(foundry_dir / YAML, [f"model.pretrained_model_name_or_path={tiny_llama}"])
    assert cfg.data.preprocessing_fn == "finetune_example.preprocessing:multiple_choice"  # left to the import system
    assert any("no finetune_example/preprocessing.py under the working directory" in n for n in cfg.seed_compat)


# ---- end to end -------------------------------------------------------------------------------

def test_local_dataset_example_trains_as_foundry_would(foundry_dir, tiny_llama, capsys):
    """100 rows, global batch 8, drop_last: 12 steps; lr follows Composer's cosine warmup; final/ loads."""
    out = foundry_dir / "run"
    assert main(["train", YAML, f"model.pretrained_model_name_or_path={tiny_llama}", f"save_folder={out}"]) == 0
    err = capsys.readouterr().err
    assert "read a config in llm-foundry form; translated:" in err and "-> max_grad_norm 1" in err and "dropped and counted" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12
    lrs = [r["learning_rate"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "learning_rate" in r]
    assert lrs == pytest.approx([6e-4 * k / 100 for k in range(12)])  # still warming up: t_warmup is 100ba
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"


@pytest.mark.demo_model
def test_local_dataset_example_on_the_demo_model(foundry_dir):
    from tunesmith.demo_model import demo_model_path

    out = foundry_dir / "run"
    assert main(["train", YAML, f"model.pretrained_model_name_or_path={demo_model_path()}", f"save_folder={out}",
                 "max_duration=3ba", "train_loader.dataset.max_seq_len=256"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_loss"] is not None
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").config.model_type == "llama"
