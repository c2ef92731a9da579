"""The MLP's silu(gate) * up keeps gate and up for backward and recomputes silu(gate): same
values and gradients, one activation of the MLP's width less per token and layer."""
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from test_autocast import saved_bytes_and_output
from tunesmith.train.swiglu import silu_mul, use_memory_saving_swiglu


def test_silu_mul_matches_autograd_in_float64():
    torch.manual_seed(0)
    gate = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    up = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5, 7, dtype=torch.float64)
    want = F.silu(gate) * up
    want_grads = torch.autograd.grad(want, (gate, up), grad)
    got = silu_mul(gate, up)
    got_grads = torch.autograd.grad(got, (gate, up), grad)
    assert torch.allclose(got, want, rtol=0, atol=1e-14)
    assert all(torch.allclose(g, w, rtol=0, atol=1e-12) for g, w in zip(got_grads, want_grads))


def test_model_keeps_less_and_trains_the_same(tiny_llama):
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (2, 16))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).train()
    before, want = saved_bytes_and_output(model, ids)
    want.float().square().mean().backward()
    want_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert use_memory_saving_swiglu(model) == model.config.num_hidden_layers
    after, got = saved_bytes_and_output(model, ids)
    got.float().square().mean().backward()
    assert torch.equal(got, want)
    assert all(torch.equal(p.grad, want_grads[n]) for n, p in model.named_parameters())  # the same kernels
    # silu(gate) is no longer kept: one bf16 tensor of the MLP's width per token and layer
    layers, width = model.config.num_hidden_layers, model.config.intermediate_size
    assert before - after == layers * ids.numel() * width * 2
