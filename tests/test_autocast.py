import torch
from transformers import AutoModelForCausalLM

from tunesmith.train.autocast import share_norm_casts


def saved_bytes_and_output(model, ids):
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, use_cache=False).logits
    return sum(storages.values()), out


def test_norm_output_is_cast_once_and_the_result_is_unchanged(tiny_llama):
    ids = torch.randint(5, 300, (2, 16))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).train()
    before, want = saved_bytes_and_output(model, ids)
    assert share_norm_casts(model) == 2 * model.config.num_hidden_layers
    after, got = saved_bytes_and_output(model, ids)
    assert torch.equal(got, want)  # the linears did this very cast themselves before
    # q, k, v share one bf16 copy instead of three, gate and up one instead of two
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    assert before - after == layers * 3 * ids.numel() * hidden * 2
