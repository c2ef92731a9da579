"""The speed-up registry across model families: tiny random models of Llama, Mistral (with and
without a sliding window), Qwen2, Qwen3, Phi-3, Granite (scaled logits), Gemma 2 (soft-capped
logits, sandwich norms, GELU) and GPT-2, built from configs here.

For each: the registry applies what the model's structure allows (and says why not the rest);
with every applicable speed-up on, loss and gradients equal those with all off (fp32); and a
packed row's examples are isolated: their losses and gradients equal the examples run alone.
"""
import copy
import sys
import types
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from transformers.trainer_pt_utils import LabelSmoother

from tunesmith.config.train_schema import ModelConfig
from tunesmith.errors import ConfigError
from tunesmith.hf import IGNORE
from tunesmith.train.collate import PadCollator
from tunesmith.train.loss import TrainedPositionsLoss, use_trained_positions_loss
from tunesmith.train.speedups import REGISTRY, apply_speedups

VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
ALL = ["trained_positions_loss", "varlen_attention", "norm_casts", "swiglu"]

# family -> (config class name, config kwargs, attention, speed-ups that must apply)
FAMILIES = {
    "llama": ("LlamaConfig", {}, "sdpa", ALL),
    "mistral": ("MistralConfig", {"sliding_window": None}, "sdpa", ALL),
    # examples longer than the window: attention per example hands them to the windowed mask
    "mistral_sliding_window": ("MistralConfig", {"sliding_window": 4}, "sdpa", ALL),
    "qwen2": ("Qwen2Config", {}, "sdpa", ALL),
    "qwen3": ("Qwen3Config", {"head_dim": 8}, "sdpa", ALL),
    "phi3": ("Phi3Config", {}, "sdpa", ALL),  # one fused gate_up_proj
    "granite": ("GraniteConfig", {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                                  "attention_multiplier": 0.3}, "sdpa", ["varlen_attention", "norm_casts", "swiglu"]),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
                                "query_pre_attn_scalar": 8}, "eager", []),
    "gpt2": ("GPT2Config", {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 128, "resid_pdrop": 0.0,
                            "embd_pdrop": 0.0, "attn_pdrop": 0.0}, "sdpa", ["varlen_attention"]),
}
WHY_NOT = {  # what the registry must say for the speed-ups it leaves out
    ("granite", "trained_positions_loss"): "logits_scaling",
    ("gemma2", "trained_positions_loss"): "final_logit_softcapping",
    ("gemma2", "varlen_attention"): "attention is eager",
    ("gemma2", "norm_casts"): "pre_feedforward_layernorm",
    ("gemma2", "swiglu"): "not SiLU",
    ("gpt2", "trained_positions_loss"): "not laid out as a decoder",
    ("gpt2", "norm_casts"): "no decoder layers",
    ("gpt2", "swiglu"): "no gated MLP",
}


def tiny_model(family: str):
    import transformers

    name, kwargs, attn, _ = FAMILIES[family]
    small = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2} if family == "gpt2" else SMALL
    config = getattr(transformers, name)(**{**small, **kwargs})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).train()


def fake_args(**kw):
    """The TrainingArguments fields the registry reads and sets."""
    return SimpleNamespace(**{"use_liger_kernel": False, "liger_kernel_config": None, "label_smoothing_factor": 0.0,
                              "ddp_find_unused_parameters": None, **kw})


def with_speedups(model, model_cfg=None, args=None, **apply):
    report = apply_speedups(model, model_cfg or ModelConfig(), args or fake_args(), {}, **apply)
    return model, report


def examples() -> list[list[int]]:
    torch.manual_seed(1)
    return [torch.randint(3, VOCAB, (n,)).tolist() for n in (7, 12, 5, 9)]


def packed_batch(rows: list[list[int]], varlen: bool) -> dict:
    # `concatenate` masks each example's first label: nothing is trained across a boundary.
    features = [{"input_ids": r, "labels": r} for r in rows]
    return PadCollator(pad_id=0, padding_free=True, segment_kwargs=varlen)(features)


def loss_sum_and_grads(model, batch: dict):
    """The summed loss over trained tokens (num_items_in_batch=1) and the gradients of that sum."""
    model.zero_grad()
    loss = model(**batch, num_items_in_batch=torch.tensor(1), use_cache=False).loss  # as TunesmithTrainer calls it
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(got: dict, want: dict, atol: float = 1e-5):
    assert got.keys() == want.keys() and len(got) > 0
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=atol), (name, (got[name] - want[name]).abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_registry_applies_what_the_structure_allows_and_says_why_not(family):
    model, report = with_speedups(tiny_model(family))
    assert report.applied == FAMILIES[family][3]
    assert set(report.applied) | set(report.skipped) == {s.name for s in REGISTRY}
    assert "needs a CUDA GPU" in report.skipped["liger"] or torch.cuda.is_available()
    for (fam, name), reason in WHY_NOT.items():
        if fam == family:
            assert reason in report.skipped[name], report.skipped[name]


@pytest.mark.parametrize("family,why_not", [("llama", None), ("gpt2", "no decoder layers at model.layers")])
def test_memory_is_given_back_between_layers_only_with_checkpointing_on_a_cpu(family, why_not):
    _, report = with_speedups(tiny_model(family))
    assert report.skipped["release_memory"] == "gradient checkpointing is off (activations stay until the backward pass)"
    _, report = with_speedups(tiny_model(family), args=fake_args(activation_checkpointing=True))
    if torch.cuda.is_available():
        assert "GPU" in report.skipped["release_memory"]
    elif why_not:
        assert report.skipped["release_memory"] == why_not
    else:
        assert report.uses("release_memory")
    off = ModelConfig.model_validate({"speedups": {"release_memory": "off"}})
    _, report = with_speedups(tiny_model(family), off, args=fake_args(activation_checkpointing=True))
    assert report.skipped["release_memory"] == "off in the config (model.speedups.release_memory)"


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_with_every_speedup_equal_those_with_none(family):
    plain = tiny_model(family)
    fast, report = with_speedups(copy.deepcopy(plain))
    batch = packed_batch(examples(), varlen=True)
    want_loss, want = loss_sum_and_grads(plain, batch)
    got_loss, got = loss_sum_and_grads(fast, batch)
    assert torch.allclose(got_loss, want_loss, rtol=1e-5)
    assert_close_grads(got, want)
    assert any(g.abs().sum() > 0 for g in got.values())


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_examples_are_isolated_with_every_speedup(family):
    model, report = with_speedups(tiny_model(family))
    rows = examples()
    batch = packed_batch(rows, varlen=report.uses("varlen_attention"))
    packed_loss, packed_grads = loss_sum_and_grads(model, batch)
    alone_total, alone_grads = 0.0, {}
    start = 0
    for row in rows:
        alone = {"input_ids": torch.tensor([row]), "labels": torch.tensor([[IGNORE] + row[1:]])}
        loss, grads = loss_sum_and_grads(model, alone)
        # the same example inside the packed row: only its labels kept
        labels = torch.full_like(batch["labels"], IGNORE)
        labels[:, start:start + len(row)] = batch["labels"][:, start:start + len(row)]
        inside, _ = loss_sum_and_grads(model, {**batch, "labels": labels})
        assert torch.allclose(inside, loss, rtol=1e-5), (family, start)
        alone_total = alone_total + loss
        alone_grads = {n: alone_grads.get(n, 0) + g for n, g in grads.items()}
        start += len(row)
    assert torch.allclose(packed_loss, alone_total, rtol=1e-5)
    assert_close_grads(packed_grads, alone_grads)


def test_each_speedup_is_switched_off_by_its_key():
    cfg = ModelConfig.model_validate({"loss": "model", "speedups": {"varlen_attention": "off", "norm_casts": "off",
                                                                    "swiglu": "off", "liger": "off"}})
    model, report = with_speedups(tiny_model("llama"), cfg)
    assert report.applied == []
    assert report.skipped["trained_positions_loss"] == "off in the config (model.loss)"
    assert report.skipped["swiglu"] == "off in the config (model.speedups.swiglu)"
    # nothing of tunesmith's is installed on the model
    assert "forward" not in vars(model) and model.config._attn_implementation == "sdpa"
    assert not any("forward" in vars(m) or m._forward_hooks for m in model.modules())
    cfg = ModelConfig.model_validate({"speedups": yaml.safe_load("swiglu: off")})  # YAML reads a bare off as false
    assert with_speedups(tiny_model("llama"), cfg)[1].applied == ["trained_positions_loss", "varlen_attention", "norm_casts"]


def test_every_entry_has_its_switch_in_the_config():
    from tunesmith.config.train_schema import SpeedupsConfig

    switches = {s.switch for s in REGISTRY}
    assert switches == {"model.loss"} | {f"model.speedups.{name}" for name in SpeedupsConfig.model_fields}
    assert all(s.replaces and s.name == s.switch.rsplit(".", 1)[-1] for s in REGISTRY if s.switch != "model.loss")


def test_the_loss_at_trained_positions_asked_for_where_it_cannot_apply_is_refused():
    with pytest.raises(ConfigError, match="model.loss: trained_positions_loss does not apply .*final_logit_softcapping"):
        with_speedups(tiny_model("gemma2"), ModelConfig(loss="trained_positions"))
    assert with_speedups(tiny_model("llama"), ModelConfig(loss="trained_positions"))[1].uses("trained_positions_loss")


def test_transformers_outside_the_written_range_turns_the_speedups_off(capsys):
    model, report = with_speedups(tiny_model("llama"), version="6.1.0")
    assert report.applied == [] and "outside the range" in report.skipped["swiglu"]
    assert "transformers 6.1.0 is outside the range the patches are written for" in capsys.readouterr().err


def test_an_import_that_fails_turns_off_that_speedup_only(capsys):
    # Liger asked for where its package cannot be imported: Liger is off, said, and tunesmith's
    # own SwiGLU (which would have given way to Liger's) takes the MLPs.
    args = fake_args(use_liger_kernel=True)
    model, report = with_speedups(tiny_model("llama"), args=args)
    assert "an import failed" in report.skipped["liger"] and args.use_liger_kernel is False
    assert report.applied == ALL
    assert "speed-up liger is off" in capsys.readouterr().err


@pytest.fixture
def fake_liger(monkeypatch):
    """liger_kernel's table of the model types it has kernels for (the package is GPU-only)."""
    patch = types.ModuleType("liger_kernel.transformers.monkey_patch")
    patch.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": None, "qwen2": None}
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", patch)


def test_liger_takes_the_mlps_and_leaves_the_loss_at_trained_positions(fake_liger):
    args = fake_args(use_liger_kernel=True)
    model, report = with_speedups(tiny_model("llama"), args=args)
    assert report.applied == ["trained_positions_loss", "liger", "varlen_attention", "norm_casts"]
    assert "Liger's SwiGLU kernel" in report.skipped["swiglu"]
    assert args.use_liger_kernel and args.liger_kernel_config == {"fused_linear_cross_entropy": False, "cross_entropy": False}
    args = fake_args(use_liger_kernel=True)  # a model type Liger has no kernels for: ours run, Liger is not asked
    model, report = with_speedups(tiny_model("phi3"), args=args)
    assert report.skipped["liger"] == "Liger has no kernels for model type phi3" and not args.use_liger_kernel
    assert "swiglu" in report.applied


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothing_is_the_trainers_label_smoothing(eps):
    plain = tiny_model("llama")
    fast = copy.deepcopy(plain)
    assert use_trained_positions_loss(fast, TrainedPositionsLoss(label_smoothing=eps))
    batch = packed_batch(examples(), varlen=False)
    count = (batch["labels"][:, 1:] != IGNORE).sum()
    plain.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    want = (LabelSmoother(epsilon=eps)(plain(**inputs, use_cache=False), batch["labels"], shift_labels=True) if eps
            else plain(**batch, use_cache=False).loss)
    want.backward()
    fast.zero_grad()
    got = fast(**batch).loss
    got.backward()
    assert torch.allclose(got, want, rtol=1e-5)
    assert_close_grads({n: p.grad for n, p in fast.named_parameters()}, {n: p.grad for n, p in plain.named_parameters()})
    fast.eval()  # the eval loss uses the same component: per-row sums, divided by the count
    with torch.no_grad():
        rows = fast(**batch).row_losses
    assert torch.allclose(rows[:, 0].sum() / count, want.detach(), rtol=1e-5)


def test_a_custom_compute_loss_func_is_refused_with_the_loss_at_trained_positions(tmp_path):
    from transformers import TrainingArguments

    from tunesmith.train.trainer import TunesmithTrainer

    model = tiny_model("llama")
    use_trained_positions_loss(model)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ConfigError, match="compute_loss_func"):
        TunesmithTrainer(model=model, args=args, compute_loss_func=lambda outputs, labels, num_items_in_batch: 0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", label_smoothing_factor=0.1)
    use_trained_positions_loss(model, TrainedPositionsLoss(label_smoothing=0.1))
    trainer = TunesmithTrainer(model=model, args=args)
    assert trainer.label_smoother is None  # the loss smooths; the Trainer's smoother would bypass it


def test_the_trainers_loss_keeps_packed_examples_apart_for_models_on_their_own_loss(tmp_path):
    # With a KV cache, transformers ignores the position restarts of a packed row. The Trainer
    # sets config.use_cache from training.use_cache (default false); the loss runs without a
    # cache even when a user sets it true.
    from transformers import TrainingArguments

    from tunesmith.train.trainer import TunesmithTrainer

    model = tiny_model("llama")  # as with model.loss: model and no speed-ups: its own forward and loss
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", use_cache=True)
    trainer = TunesmithTrainer(model=model, args=args)
    rows, one = examples(), torch.tensor(1)
    packed = trainer.compute_loss(model, packed_batch(rows, varlen=False), num_items_in_batch=one)
    alone = sum(trainer.compute_loss(model, {"input_ids": torch.tensor([r]), "labels": torch.tensor([[IGNORE] + r[1:]])},
                                     num_items_in_batch=one) for r in rows)
    assert torch.allclose(packed, alone, rtol=1e-5)
    leaky = model(**packed_batch(rows, varlen=False), num_items_in_batch=one).loss  # config.use_cache: a cache
    assert not torch.allclose(leaky, alone, rtol=1e-3)


def one_step(tmp_path, base, model=None, **training):
    """One SGD step through the CLI: (final weights, summary.json, the logged loss)."""
    import json

    from test_train import setup_run
    from tunesmith.cli import main

    cfg = setup_run(tmp_path, base, model=model, training={"max_steps": 1, "optim": "sgd", "learning_rate": 0.5,
                                                           "bf16": False, "max_grad_norm": 1e9, "logging_steps": 1, **training})
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    return AutoModelForCausalLM.from_pretrained(out / "final").state_dict(), summary, summary["first_loss"]


def test_label_smoothing_trains_the_same_on_either_loss(tmp_path, tiny_llama):
    fast, fast_summary, fast_loss = one_step(tmp_path / "a", tiny_llama, label_smoothing_factor=0.5)
    own, own_summary, own_loss = one_step(tmp_path / "b", tiny_llama, model={"loss": "model"}, label_smoothing_factor=0.5)
    _, _, unsmoothed_loss = one_step(tmp_path / "c", tiny_llama)
    assert fast_summary["loss"] == "trained_positions" and own_summary["loss"] == "model"
    assert fast_summary["label_smoothing"] == 0.5
    assert abs(fast_loss - own_loss) < 1e-5 and abs(fast_loss - unsmoothed_loss) > 1e-3
    assert max((fast[k] - own[k]).abs().max().item() for k in fast) < 1e-5


def test_the_logits_check_catches_a_change_no_config_key_names_and_skips_the_decoder():
    from transformers import LlamaForCausalLM

    from tunesmith.train.loss import trained_positions_unsupported

    class ScaledLogits(LlamaForCausalLM):  # a remote-code style model: scales its logits in the forward
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    plain = tiny_model("llama")
    calls = []
    plain.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    assert trained_positions_unsupported(plain) is None
    assert calls == []  # the check ran lm_head only, on a stand-in for the decoder's output
    assert "forward" not in vars(plain.model)  # and put the decoder's forward back
    torch.manual_seed(0)
    scaled = ScaledLogits(plain.config)
    assert trained_positions_unsupported(scaled) == "the logits are changed after lm_head (soft-capping or scaling)"
