"""What the GGUF export writes for each family, read back from the file without llama.cpp (the
default suite); tests/test_runtime_gguf.py runs the same files in llama.cpp itself. And what it
refuses, by name and with the reason."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tiny_families import make_tiny_family, make_tokenizer
from tunesmith.errors import ModelError
from tunesmith.ship.gguf import export_gguf


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_toks")
    return {kind: make_tokenizer(kind, root / kind) for kind in ("bpe", "spm", "spm-gemma")}


def tensor(reader: GGUFReader, name: str) -> np.ndarray:
    t = next(t for t in reader.tensors if t.name == name)
    return np.array(t.data, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])


def field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_llama_3_1_rope_factors_are_transformers_own(tmp_path, toks):
    """rope_freqs holds, per frequency, the divisor transformers' llama3 rotary init applies."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    folder = make_tiny_family("llama-3.1-rope", toks["bpe"], tmp_path / "m")
    config = AutoConfig.from_pretrained(folder)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = config.hidden_size // config.num_attention_heads
    plain = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    reader = GGUFReader(export_gguf(folder, tmp_path / "m.gguf"))
    np.testing.assert_allclose(tensor(reader, "rope_freqs.weight"), (plain / scaled.double()).numpy(), rtol=1e-5)
    assert {1.0, 8.0} <= set(np.round(tensor(reader, "rope_freqs.weight"), 4))  # kept, slowed, and blended between


def test_gemma_norms_are_written_plus_one_and_softcaps_and_windows_kept(tmp_path, toks):
    folder = make_tiny_family("gemma3", toks["spm-gemma"], tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    reader = GGUFReader(export_gguf(folder, tmp_path / "m.gguf"))
    np.testing.assert_allclose(tensor(reader, "blk.0.attn_q_norm.weight"), model.model.layers[0].self_attn.q_norm.weight.detach() + 1)
    np.testing.assert_allclose(tensor(reader, "output_norm.weight"), model.model.norm.weight.detach() + 1)
    assert field(reader, "gemma3.final_logit_softcapping") == pytest.approx(3.0)
    assert field(reader, "gemma3.attention.sliding_window") == 6
    assert field(reader, "gemma3.attention.sliding_window_pattern") == [True, False]
    assert field(reader, "gemma3.rope.freq_base") == 1e6 and field(reader, "gemma3.rope.freq_base_swa") == 10000.0
    assert field(reader, "gemma3.rope.scaling.type") == "linear" and field(reader, "gemma3.rope.scaling.factor") == 8.0


def test_gpt2_conv1d_weights_are_transposed(tmp_path, toks):
    folder = make_tiny_family("gpt2", toks["bpe"], tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(folder)
    reader = GGUFReader(export_gguf(folder, tmp_path / "m.gguf"))
    want = model.transformer.h[0].attn.c_attn.weight.detach().T.half().float().numpy()  # Conv1D: (in, out)
    np.testing.assert_array_equal(tensor(reader, "blk.0.attn_qkv.weight"), want)


def test_sentencepiece_vocab_has_scores_byte_tokens_and_the_prefix_rule(tmp_path, toks):
    import gguf

    for kind, prefix in (("spm", True), ("spm-gemma", False)):
        folder = make_tiny_family("llama", toks[kind], tmp_path / kind)
        reader = GGUFReader(export_gguf(folder, tmp_path / f"{kind}.gguf"))
        assert field(reader, "tokenizer.ggml.model") == "llama" and field(reader, "tokenizer.ggml.add_space_prefix") is prefix
        tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
        scores = field(reader, "tokenizer.ggml.scores")
        assert types[tokens.index("<0x0A>")] == gguf.TokenType.BYTE and types[tokens.index("<unk>")] == gguf.TokenType.UNKNOWN
        spec = json.loads(AutoTokenizer.from_pretrained(folder).backend_tokenizer.to_str())
        made = {}
        for rank, (a, b) in enumerate(m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]):
            made.setdefault(a + b, rank)
        # llama.cpp merges the pair whose result scores highest: the token of BPE's earliest merge
        assert [scores[tokens.index(t)] for t in made] == [-1.0 - r for r in made.values()]
        assert all(s == 0.0 for t, s in zip(tokens, scores) if t not in made)


@pytest.mark.parametrize("model_type, build, match", [
    ("gemma3", "gemma3_multimodal", "this is Gemma 3's multimodal model"),
    ("gpt_neox", "neox", "GPT-NeoX/Pythia"),
])
def test_unwritten_families_are_refused_by_name_with_the_reason(tmp_path, toks, model_type, build, match):
    import transformers

    tok = AutoTokenizer.from_pretrained(toks["bpe"])
    if build == "neox":
        config = transformers.GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2)
    else:
        config = transformers.Gemma3Config(text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                                                        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                                                        "head_dim": 16},
                                           vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                                          "num_attention_heads": 2, "image_size": 28, "patch_size": 14})
    config.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(ModelError, match=f"does not write the '{model_type}' architecture: {match}"):
        export_gguf(tmp_path / "m", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


@pytest.mark.parametrize("variant, change, match", [
    ("qwen2", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     "rotary scaling 'dynamic' is not written for qwen2"),
    ("gemma2", {"query_pre_attn_scalar": 64}, "llama.cpp scales queries by 1/sqrt\\(32\\)"),
    ("gemma2", {"hidden_activation": "gelu"}, "llama.cpp runs tanh-approximated GELU"),
    ("gemma2", {"final_logit_softcapping": None}, "llama.cpp's Gemma 2 always caps"),
])
def test_what_llama_cpp_would_compute_differently_is_refused(tmp_path, toks, variant, change, match):
    kind = "spm-gemma" if variant.startswith("gemma") else "bpe"
    folder = make_tiny_family(variant, toks[kind], tmp_path / "m", **change)
    with pytest.raises(ModelError, match=match):
        export_gguf(folder, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


def test_a_phi3_name_without_its_token_is_refused(tmp_path, toks):
    """llama.cpp looks <|endoftext|> up for any file named like Phi-3 and fails to load without it."""
    folder = make_tiny_family("phi3", toks["spm"], tmp_path / "m")
    with pytest.raises(ModelError, match="makes llama.cpp treat the file as Phi-3"):
        export_gguf(folder, tmp_path / "x.gguf", name="my-phi3-bot")
    assert export_gguf(folder, tmp_path / "x.gguf", name="my-bot").is_file()


def test_q4_k_m_is_answered_with_the_llama_cpp_command(tmp_path, tiny_llama):
    """The gguf package reads Q4_K but cannot write it; the answer names the exact commands."""
    import gguf

    from tunesmith.config.schema import Config
    from tunesmith.ship.export import export

    with pytest.raises(NotImplementedError):
        gguf.quants.quantize(np.zeros((1, 256), np.float32), gguf.GGMLQuantizationType.Q4_K)
    cfg = Config(name="toy", base_model=str(tiny_llama), output_dir=str(tmp_path / "out"))
    with pytest.raises(ModelError) as err:
        export(cfg, "ollama", "q4_K_M", model=str(tiny_llama))
    out = tmp_path / "out" / "export"
    assert f"llama-quantize {out / 'toy-f16.gguf'} {out / 'toy-q4_K_M.gguf'} Q4_K_M" in err.value.hint
    assert f"ollama create toy -f {out / 'Modelfile'} --quantize q4_K_M" in err.value.hint


def test_a_sliding_window_llama_cpp_leaves_out_is_warned_about(tmp_path, toks, capsys):
    folder = make_tiny_family("mistral", toks["bpe"], tmp_path / "m", sliding_window=64)
    export_gguf(folder, tmp_path / "m.gguf")
    assert "llama.cpp runs mistral without its sliding window (64 tokens): past 64 tokens" in capsys.readouterr().err
    export_gguf(make_tiny_family("gemma2", toks["spm-gemma"], tmp_path / "g"), tmp_path / "g.gguf")  # Gemma's window is kept
    assert "warning" not in capsys.readouterr().err
