"""Packing: rows are filled best-fit-decreasing, examples never see each other, nothing is
trained across a boundary, and training on packed or padding-free batches equals padded."""
import json

import pytest
import torch
import torch.nn.functional as F
from datasets import load_from_disk
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.data.collate import concatenate
from tunesmith.data.pack import plan_bins
from tunesmith.train.attention import sdpa_varlen_forward
from tunesmith.train.collate import PadCollator


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=60), st.integers(64, 128))
def test_bins_hold_every_example_once_within_capacity(lengths, capacity):
    bins = plan_bins(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert sum(lengths) > capacity * (len(bins) - 1) / 2  # never worse than half full on average


def test_best_fit_picks_the_tightest_row():
    # 6 and 5 open two rows (room 4 and 5); 4 goes to the row with room 4, the tightest.
    assert plan_bins([6, 5, 4], 10) == [[0, 2], [1]]


def per_token_losses(model, batch, use_cache=False):
    with torch.no_grad():
        logits = model(**batch, use_cache=use_cache).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["input_ids"][:, 1:].flatten(), reduction="none").view(
        logits.shape[0], -1)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "sdpa_varlen"])
def test_packed_examples_do_not_see_each_other(tiny_llama, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    model.set_attn_implementation(attn)
    torch.manual_seed(0)
    examples = [torch.randint(5, 300, (n,)).tolist() for n in (7, 12, 5, 9)]
    features = [{"input_ids": e, "labels": e} for e in examples]
    # Two packed rows (the second padded at its end), so boundaries inside and across rows count.
    collate = PadCollator(pad_id=3, multiple_of=8, segment_kwargs=attn == "sdpa_varlen")
    packed = collate([concatenate(features[:3]), concatenate(features[3:])])
    assert "attention_mask" not in packed and packed["position_ids"][0, :24].tolist() == [*range(7), *range(12), *range(5)]
    losses = per_token_losses(model, packed)
    starts = [(0, 0), (0, 7), (0, 19), (1, 0)]
    for (row, start), e in zip(starts, examples):
        alone = per_token_losses(model, {"input_ids": torch.tensor([e])})[0]
        # within an example, every next-token loss equals the example run on its own
        assert torch.allclose(losses[row, start:start + len(e) - 1], alone, atol=1e-5)
    leaky = per_token_losses(model, packed, use_cache=True)[0]
    if attn == "sdpa_varlen":
        # It splits at the boundaries it is given, so it isolates even where the mask would not.
        assert packed["cu_seq_lens_q"].tolist() == [0, 7, 19, 24, 33, 48]  # row 1: 9 tokens + 15 padding
        assert torch.allclose(leaky, losses[0], atol=1e-5)
    else:
        # Control: with the KV cache on, transformers ignores the restarts and later examples see earlier ones.
        assert (leaky[7:18] - losses[0, 7:18]).abs().max() > 1e-3


def test_varlen_attention_under_bf16_autocast_runs_short_examples_in_fp32_and_hands_on_bf16():
    # Under bf16 autocast the rotary embedding hands q and k over in fp32 and v in bf16; on the
    # CPU a short example's kernel runs in fp32 (faster there) and the output is bf16, as sdpa's would be.
    torch.manual_seed(0)
    q = torch.randn(1, 4, 20, 16, requires_grad=True)
    k = torch.randn(1, 2, 20, 16, requires_grad=True)
    v = torch.randn(1, 2, 20, 16).bfloat16().requires_grad_()
    cu = torch.tensor([0, 12, 20], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_varlen_forward(None, q, k, v, None, cu_seq_lens_q=cu)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 20, 4, 16)
    ref = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e].float(), is_causal=True,
                                                    enable_gqa=True) for s, e in ((0, 12), (12, 20))], 2)
    assert torch.equal(out, ref.transpose(1, 2).bfloat16())  # fp32 attention per example, rounded once
    out.float().square().sum().backward()
    assert q.grad.dtype == torch.float32 and v.grad.dtype == torch.bfloat16 and v.grad.abs().sum() > 0


def test_varlen_attention_runs_long_examples_in_bf16_on_the_cpu(monkeypatch):
    # Past FP32_ON_CPU_UP_TO tokens the quadratic part dominates and the CPU kernel is faster in bf16.
    from tunesmith.train import attention

    monkeypatch.setattr(attention, "FP32_ON_CPU_UP_TO", 10)
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 20, 16), torch.randn(1, 2, 20, 16)
    v = torch.randn(1, 2, 20, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = sdpa_varlen_forward(None, q, k, v, None, cu_seq_lens_q=torch.tensor([0, 12, 20], dtype=torch.int32))
    long_one = F.scaled_dot_product_attention(q[:, :, :12].bfloat16(), k[:, :, :12].bfloat16(), v[:, :, :12],
                                              is_causal=True, enable_gqa=True)  # 12 tokens: over the limit, bf16
    short_one = F.scaled_dot_product_attention(q[:, :, 12:], k[:, :, 12:], v[:, :, 12:].float(), is_causal=True,
                                               enable_gqa=True).bfloat16()  # 8 tokens: fp32, rounded once
    assert torch.equal(out, torch.cat([long_one, short_one], 2).transpose(1, 2))


def test_first_label_of_each_packed_example_is_masked():
    row = concatenate([{"input_ids": [1, 10, 11], "labels": [1, 10, 11]}, {"input_ids": [1, 20], "labels": [1, 20]}])
    assert row["labels"] == [-100, 10, 11, -100, 20] and row["position_ids"] == [0, 1, 2, 0, 1]


ROWS = [{"prompt": f"Q: {q}\nA: ", "response": a} for q, a in
        [("sky?", "blue"), ("France?", "Paris"), ("2+2?", "4"), ("hot?", "cold"), ("ice?", "frozen water"), ("fox?", "what")]]


def one_sgd_step(tmp_path, base, **data):
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = write_config(tmp_path / "cfg.yaml", {
        "base_model": str(base), "output_dir": "out", "data": {"train": {"data_files": "rows.jsonl"}, "max_length": 64, **data},
        "training": {"max_steps": 1, "optim": "sgd", "learning_rate": 0.5, "bf16": False, "max_grad_norm": 1e9,
                     "per_device_train_batch_size": 6, "save_steps": 1000}})
    assert main(["run", str(cfg)]) == 0
    return AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").state_dict()


def test_packed_and_padding_free_training_equal_padded(tmp_path, tiny_llama, capsys):
    padded = one_sgd_step(tmp_path / "a", tiny_llama, batching="padded")
    packed = one_sgd_step(tmp_path / "b", tiny_llama, packing=True)
    # The batch size counts packed rows: the run says how many examples a step really trains.
    assert json.loads((tmp_path / "b" / "out" / "summary.json").read_text())["examples_per_row"] == 3.0
    assert "3.0 examples per row: a step of 6 rows trains ~18 examples; per_device_train_batch_size 2" in capsys.readouterr().err
    free = one_sgd_step(tmp_path / "c", tiny_llama)  # the default: padding-free, attention per example
    assert json.loads((tmp_path / "c" / "out" / "summary.json").read_text())["batching"] == "padding_free"
    # The saved model names plain sdpa, so it loads without tunesmith's attention registered.
    assert "sdpa_varlen" not in (tmp_path / "c" / "out" / "final" / "config.json").read_text()
    rows = load_from_disk(str(tmp_path / "b" / "out" / "data"))["train"]
    assert len(rows) == 2 and sorted(n for r in rows["seq_lengths"] for n in r) == sorted(
        len(r) for r in load_from_disk(str(tmp_path / "a" / "out" / "data"))["train"]["input_ids"])
    report = json.loads((tmp_path / "b" / "out" / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["packing"]["examples"] == 6 and report["splits"]["train"]["packing"]["rows"] == 2
    start = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert max((padded[k] - start[k]).abs().max().item() for k in start) > 1e-3
    for other in (packed, free):
        assert max((padded[k] - other[k]).abs().max().item() for k in padded) < 1e-5
