"""Activation (gradient) checkpointing together with every tunesmith speed-up: the trained-positions
loss in the forward, the shared norm casts, the MLP that recomputes silu, attention per example
on padding-free rows, and (on a CPU) the memory given back between layers. Recomputing a block
must give the loss and gradients of keeping it."""
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from test_train import first_update
from tunesmith.config.schema import Config
from tunesmith.hf import IGNORE
from tunesmith.train.collate import PadCollator
from tunesmith.train import memory
from tunesmith.train.model import add_lora, decoder_layers
from tunesmith.train.speedups import apply_speedups

ON_CPU = not torch.cuda.is_available()


def rows_of_different_lengths() -> list[dict]:
    torch.manual_seed(1)
    rows = []
    for n in (7, 12, 5, 16):
        ids = torch.randint(5, 300, (n,)).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE] * (n // 2) + ids[n // 2:]})
    return rows


def with_speedups(tiny_llama, method: str, checkpointing: bool = True):
    """The model as train/run.py sets it up: every speed-up of the registry that applies (all but
    Liger; release_memory where the run checkpoints on a CPU)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    cfg = Config.model_validate({"base_model": str(tiny_llama), "data": {"train": {"data_files": "x.jsonl"}}})
    if method == "lora":
        model = add_lora(model, cfg)
    args = SimpleNamespace(use_liger_kernel=False, liger_kernel_config=None, label_smoothing_factor=0.0,
                           ddp_find_unused_parameters=None, activation_checkpointing=checkpointing)
    report = apply_speedups(model, cfg.model, args, {})
    release = ["release_memory"] if checkpointing and ON_CPU else []
    assert report.applied == ["trained_positions_loss", "varlen_attention", "norm_casts", "swiglu", *release]
    return model.train()


def loss_and_grads(model, batch, autocast: bool):
    model.zero_grad()
    torch.manual_seed(0)  # the same LoRA dropout masks (checkpointing replays the RNG state)
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("kwargs", [None, {"use_reentrant": True}, pytest.param({"offload": True}, marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="offload moves activations off a GPU"))], ids=["default", "reentrant", "offload"])
def test_checkpointing_gives_the_same_loss_and_gradients(tiny_llama, method, autocast, kwargs):
    batch = PadCollator(pad_id=0, padding_free=True, segment_kwargs=True)(rows_of_different_lengths())
    assert "cu_seq_lens_q" in batch  # attention per example is what runs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    model = with_speedups(tiny_llama, method).to(device)
    want_loss, want = loss_and_grads(model, batch, autocast)
    # As the Trainer does for `training.gradient_checkpointing: true` (and its kwargs).
    kwargs = dict(kwargs or {})
    offload = kwargs.pop("offload", False)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None, offload=offload)
    if method == "lora" and kwargs.get("use_reentrant"):
        model.enable_input_require_grads()  # the Trainer's reentrant path for frozen embeddings
    got_loss, got = loss_and_grads(model, batch, autocast)
    assert torch.equal(got_loss, want_loss)
    assert want.keys() == got.keys() and len(got) > 0
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert any(g.abs().sum() > 0 for g in got.values())


def test_training_with_checkpointing_takes_the_same_step(tmp_path, tiny_llama):
    """End to end through the CLI and the Trainer (padding-free, attention per example)."""
    plain = first_update(tmp_path / "a", tiny_llama)
    checkpointed = first_update(tmp_path / "b", tiny_llama, gradient_checkpointing=True)
    # offload (activations to host memory) has nothing to do on a CPU: dropped with a note, not a crash
    offloaded = first_update(tmp_path / "c", tiny_llama, gradient_checkpointing=True,
                             gradient_checkpointing_kwargs={"offload": True})
    start = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert max((plain[k] - start[k]).abs().max().item() for k in start) > 1e-3
    for other in (checkpointed, offloaded):
        assert max((plain[k] - other[k]).abs().max().item() for k in plain) < 1e-6


@pytest.mark.skipif(not ON_CPU, reason="memory is given back between layers on a CPU only")
@pytest.mark.parametrize("method", ["full", "lora"])
def test_memory_is_given_back_around_each_layer_and_changes_nothing(tiny_llama, method, monkeypatch):
    real = memory.malloc_trim()
    assert real is not None  # the suite runs on glibc
    calls = []
    monkeypatch.setattr(memory, "malloc_trim", lambda: lambda pad: calls.append(pad) or real(pad))
    monkeypatch.setattr(memory, "FROM_TOKENS", 40)  # the batch: 40 tokens
    batch = PadCollator(pad_id=0, padding_free=True, segment_kwargs=True)(rows_of_different_lengths())
    torch.manual_seed(0)  # the same LoRA initialisation for both
    plain = with_speedups(tiny_llama, method, checkpointing=False)
    torch.manual_seed(0)
    released = with_speedups(tiny_llama, method)
    for model in (plain, released):
        model.activation_checkpointing_enable()
    want_loss, want = loss_and_grads(plain, batch, autocast=True)
    assert calls == []
    got_loss, got = loss_and_grads(released, batch, autocast=True)
    # once after each layer's forward, once before its backward; not again in the recompute
    assert len(calls) == 2 * len(decoder_layers(released)) > 0
    assert torch.equal(got_loss, want_loss)
    assert want.keys() == got.keys() and all(torch.equal(got[n], want[n]) for n in want)
    calls.clear()
    with torch.no_grad():
        released.eval()(**batch)
    assert calls == []  # evaluation is left alone
    monkeypatch.setattr(memory, "FROM_TOKENS", 41)
    loss_and_grads(released.train(), batch, autocast=True)
    assert calls == []  # nor a step shorter than FROM_TOKENS


def test_final_folder_is_replaced_in_one_step(tmp_path, monkeypatch):
    """Saving over an existing final/ never leaves a moment without one: the complete new folder
    and the old one are exchanged, and only then is the old one removed."""
    import shutil

    from tunesmith import hf

    target, new = tmp_path / "final", tmp_path / ".final.tmp"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")
    removed = []
    real_rmtree = shutil.rmtree

    def watched_rmtree(path, *args, **kwargs):
        assert (target / "new.txt").is_file(), "final/ must hold the new folder before anything is removed"
        removed.append(path)
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(hf.shutil, "rmtree", watched_rmtree)
    hf.replace_folder(new, target)
    assert (target / "new.txt").read_text() == "new" and not (target / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and removed
