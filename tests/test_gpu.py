"""The GPU paths, on a CUDA GPU (marked `gpu`; skipped without one, so never a reason for CI to
fail). `bench/gpu/run.sh` runs them on a lent device: bf16 training steps, per-example attention
and packing isolation on CUDA, Liger's kernels with tunesmith's loss against Liger off, and QLoRA
(4-bit load, train, save the adapter, merge, load). Two-GPU cases need two GPUs: out of reach."""
import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from test_speedups import assert_close_grads, examples, packed_batch, tiny_model, with_speedups
from test_train import setup_run
from tunesmith.cli import main
from tunesmith.hf import IGNORE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def on_gpu(batch: dict) -> dict:
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}


def loss_and_grads(model, batch: dict):
    model.zero_grad()
    loss = model(**on_gpu(batch), num_items_in_batch=torch.tensor(1, device="cuda"), use_cache=False).loss
    loss.backward()
    return loss.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_packed_examples_are_isolated_on_cuda(family):
    """Per-example attention (sdpa per example, or flash-attention varlen where installed): each
    example inside a packed row has the loss it has alone, token for token."""
    model, report = with_speedups(tiny_model(family).cuda())
    assert report.uses("varlen_attention")
    rows = examples()
    batch = packed_batch(rows, varlen=True)
    start = 0
    for row in rows:
        alone, _ = loss_and_grads(model, {"input_ids": torch.tensor([row]), "labels": torch.tensor([[IGNORE] + row[1:]])})
        labels = torch.full_like(batch["labels"], IGNORE)
        labels[:, start:start + len(row)] = batch["labels"][:, start:start + len(row)]
        inside, _ = loss_and_grads(model, {**batch, "labels": labels})
        assert torch.allclose(inside, alone, rtol=1e-4), (family, start, inside, alone)
        start += len(row)


def test_every_speedup_on_cuda_equals_none():
    plain = tiny_model("llama").cuda()
    fast, _ = with_speedups(copy.deepcopy(plain))
    batch = packed_batch(examples(), varlen=True)
    want_loss, want = loss_and_grads(plain, batch)
    got_loss, got = loss_and_grads(fast, batch)
    assert torch.allclose(got_loss, want_loss, rtol=1e-4)
    assert_close_grads(got, want, atol=1e-4)


def test_liger_with_tunesmiths_loss_equals_liger_off():
    pytest.importorskip("liger_kernel")
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    from test_speedups import fake_args

    plain, _ = with_speedups(tiny_model("llama").cuda())
    liger, report = with_speedups(copy.deepcopy(plain), args=fake_args(use_liger_kernel=True))
    assert report.uses("liger"), report.skipped.get("liger")
    _apply_liger_kernel_to_instance(model=liger, rms_norm=True, swiglu=True, rope=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    batch = packed_batch(examples(), varlen=True)
    want_loss, want = loss_and_grads(plain, batch)
    got_loss, got = loss_and_grads(liger, batch)
    assert torch.allclose(got_loss, want_loss, rtol=1e-4)
    assert_close_grads(got, want, atol=1e-3)


def test_bf16_weights_train_save_and_load_on_cuda(tmp_path, tiny_llama):
    cfg = setup_run(tmp_path, tiny_llama, model={"dtype": "bfloat16"}, training={"max_steps": 20, "logging_steps": 5})
    assert main(["run", str(cfg)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"] and summary["bf16"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_qlora_trains_saves_merges_and_loads(tmp_path, tiny_llama):
    pytest.importorskip("bitsandbytes")
    cfg = setup_run(tmp_path, tiny_llama, model={"method": "qlora", "merge": True},
                    training={"max_steps": 20, "logging_steps": 5})
    assert main(["run", str(cfg)]) == 0
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_loss"] < summary["first_loss"]
    assert (out / "final" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.isfinite(merged(ids).logits).all()
