import pytest
import torch
import torch.nn.functional as F

from tunesmith.train.chunked_ce import linear_cross_entropy_sum


@pytest.mark.parametrize("weight_grad", [True, False])
@pytest.mark.parametrize("group", [2048, 16])  # one weight-gradient matmul, or three (16, 16, 5 positions)
def test_chunked_loss_and_gradients_equal_the_plain_ones(weight_grad, group):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_grad)
    targets = torch.randint(0, 50, (37,))
    scale = 1 / 29  # like dividing by the trained tokens of the accumulated batch
    (F.cross_entropy(hidden @ weight.T, targets, reduction="sum") * scale).backward()
    want = hidden.grad.clone(), weight.grad.clone() if weight_grad else None
    want_loss = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    hidden.grad = weight.grad = None
    loss = linear_cross_entropy_sum(hidden, weight, targets, chunk=8, group=group)  # 37 rows: uneven chunks
    (loss * scale).backward()
    assert torch.allclose(loss, want_loss.float(), rtol=1e-6)
    assert torch.allclose(hidden.grad, want[0], atol=1e-6)  # softmax runs in fp32
    if weight_grad:
        assert torch.allclose(weight.grad, want[1].to(weight.grad.dtype), atol=1e-6)
    else:
        assert weight.grad is None


def test_chunked_loss_under_bf16_autocast_matches_lm_head_in_bf16():
    torch.manual_seed(0)
    hidden = torch.randn(20, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    targets = torch.randint(0, 64, (20,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")
        got = linear_cross_entropy_sum(hidden, weight, targets, chunk=6)
    assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-3)
    got.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32


def test_kept_buffers_give_right_results_when_batches_change_size():
    # The working buffers are kept between calls and grown or viewed smaller: each call must still
    # see only its own positions.
    torch.manual_seed(0)
    weight = torch.randn(50, 16, dtype=torch.float64)
    for n in (37, 5, 60, 1):
        hidden = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
        targets = torch.randint(0, 50, (n,))
        loss = linear_cross_entropy_sum(hidden, weight, targets, chunk=8, group=16)
        loss.backward()
        want = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
        assert torch.allclose(loss, want.float(), rtol=1e-6)
        want_grad = torch.autograd.grad(F.cross_entropy(hidden @ weight.T, targets, reduction="sum"), hidden)[0]
        assert torch.allclose(hidden.grad, want_grad, atol=1e-6)


def test_fp32_inputs_project_straight_into_the_fp32_logits():
    # Without autocast in fp32 the projection writes the softmax buffer directly (no second copy).
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    loss = linear_cross_entropy_sum(hidden, weight, targets, chunk=8, group=16)
    loss.backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    want = F.cross_entropy(h64 @ w64.T, targets, reduction="sum")
    want.backward()
    assert torch.allclose(loss.double(), want, rtol=1e-5)
    assert torch.allclose(hidden.grad.double(), h64.grad, atol=1e-4)
    assert torch.allclose(weight.grad.double(), w64.grad, atol=1e-4)


@pytest.mark.parametrize("group", [2048, 16])
def test_label_smoothing_matches_torch_cross_entropy_over_uneven_chunks(group):
    from tunesmith.train.chunked_ce import per_token_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    want = F.cross_entropy(hidden @ weight.T, targets, reduction="sum", label_smoothing=0.2)
    want_grads = torch.autograd.grad(want, (hidden, weight))
    got = linear_cross_entropy_sum(hidden, weight, targets, chunk=8, group=group, label_smoothing=0.2)
    got_grads = torch.autograd.grad(got, (hidden, weight))
    assert torch.allclose(got, want.float(), rtol=1e-6)
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got_grads, want_grads))
    per_token = per_token_cross_entropy(hidden.detach(), weight.detach(), targets, chunk=8, label_smoothing=0.2)
    assert torch.allclose(per_token.double(), F.cross_entropy(hidden @ weight.T, targets, reduction="none",
                                                              label_smoothing=0.2), atol=1e-5)
