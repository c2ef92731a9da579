"""The exported GGUF in llama.cpp itself (llama-cpp-python built from its sdist by `make runtime`),
for a tiny random model of every family the export writes, f16 and q8_0:

- llama.cpp tokenizes text as the transformers tokenizer does (byte fallback, specials, BOS);
- its logits equal transformers' on the same rounded weights, within a bound measured here
  (llama.cpp's CPU matmuls also round the activations: to f16 beside f16 weights, to 8-bit
  blocks beside q8_0 ones, which a weights-only reference cannot reproduce). A broken export
  (Q/K rows not re-ordered, Gemma norms without +1, soft-caps dropped) is off by more than the
  largest logit: far outside the bound, see test_a_broken_export_is_caught;
- greedy decoding picks the same tokens, step by step;
- the chat template in the file's metadata, rendered by llama-cpp-python's own Jinja formatter,
  writes a conversation exactly as training rendered it, and llama.cpp tokenizes that text as
  transformers does (and, for byte-level BPE, into the very ids training used).

Skipped when the build is absent (`make runtime` builds it once, about 4 minutes on 2 cores).
Figures: `pytest -m runtime tests/test_runtime_gguf.py -s` prints them (docs/shipping.md).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

SITE = Path(os.environ.get("TUNESMITH_LLAMA_CPP_CACHE", "~/.cache/tunesmith/llama-cpp")).expanduser() / "site"
if not (SITE / "llama_cpp").is_dir():
    pytest.skip(f"llama-cpp-python is not built ({SITE} absent): `make runtime` builds it", allow_module_level=True)
sys.path.insert(0, str(SITE))
llama_cpp = pytest.importorskip("llama_cpp")

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from tiny_families import VARIANTS, make_tiny_family, make_tokenizer, rounded_like_gguf  # noqa: E402
from tunesmith.config.schema import ChatConfig, Config, DataConfig  # noqa: E402
from tunesmith.data.render import make_renderer  # noqa: E402
from tunesmith.data.tokenize import encode_batch, specials_of  # noqa: E402
from tunesmith.ship.gguf import export_gguf  # noqa: E402
from tunesmith.ship.ollama import jinja_chat_template  # noqa: E402

pytestmark = pytest.mark.runtime

PROMPTS = ["The quick brown fox jumps over the lazy dog. Question: what is the capital of France?",
           "Résumé: 12345 naïve café ☕ <|im_start|>user\nhi<|im_end|>\n  indented\ttab",
           "I'LL say it's 1234567 -- don't!\n\n\n   x  \r\n(a+b)*[c]/{d}"]
GREEDY = ["Question: what is the capital of France? Answer:", "The quick brown"]
# |llama.cpp - transformers on the rounded weights| / max |logit|: measured at most 3.7e-3 (f16)
# and 6.3e-2 (q8_0) over these families and prompts (1.7e-3 and 4.8e-2 on SmolLM2-135M); the
# broken exports of test_a_broken_export_is_caught measure 1.24 and 1.36.
TOLERANCE = {"f16": 1e-2, "q8_0": 1e-1}
FORMATS = ["chatml", "alpaca"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """variant -> (model folder, {quant: gguf path}); made once per module, on first use."""
    root, toks, cache = tmp_path_factory.mktemp("runtime"), {}, {}

    def get(variant: str, quant: str, fmt: str = "chatml"):
        kind = VARIANTS[variant][2]
        if kind not in toks:
            toks[kind] = make_tokenizer(kind, root / f"tok-{kind}")
        if variant not in cache:
            cache[variant] = (make_tiny_family(variant, toks[kind], root / variant), {})
        folder, files = cache[variant]
        if (quant, fmt) not in files:
            tok = AutoTokenizer.from_pretrained(folder)
            template = jinja_chat_template(chat_config(folder, fmt), tok)
            # "tiny", not the variant's name: llama.cpp special-cases names containing "phi3" (docs/shipping.md)
            files[quant, fmt] = export_gguf(folder, root / f"{variant}-{quant}-{fmt}.gguf", quant, name="tiny", chat_template=template)
        return folder, files[quant, fmt]
    return get


def chat_config(folder: Path, fmt: str) -> Config:
    return Config(base_model=str(folder), data=DataConfig(prompt_format=fmt, chat=ChatConfig(tools=None)))


def load(path: Path):
    return llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0)


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)])


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_tokens_match_transformers(built, variant, quant):
    folder, path = built(variant, quant)
    tok, ref, llm = AutoTokenizer.from_pretrained(folder), rounded_like_gguf(folder, quant), load(path)
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids, prompt
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0].numpy()
        got = llama_logits(llm, ids)
        rel = float(np.abs(got - want).max() / np.abs(want).max())
        print(f"\n{variant} {quant}: {len(ids)} tokens, max |logit diff| / max |logit| = {rel:.1e}")
        assert rel < TOLERANCE[quant]


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_continuation_matches_transformers(built, variant, quant):
    """f16: the same 16 tokens. q8_0: every token llama.cpp picks is one transformers (on the same
    q8_0 weights) scores within the q8_0 bound of its best: a divergence only at a near-tie."""
    folder, path = built(variant, quant)
    tok, ref, llm = AutoTokenizer.from_pretrained(folder), rounded_like_gguf(folder, quant), load(path)
    for prompt in GREEDY:
        ids = tok(prompt)["input_ids"]
        llm.reset()
        llm.eval(ids)
        picked = []
        for _ in range(16):
            picked.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval(picked[-1:])
        with torch.no_grad():
            want = ref.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id,
                                eos_token_id=None)[0, len(ids):].tolist()
            logits = ref(torch.tensor([ids + picked])).logits[0, len(ids) - 1:-1]
        same = next((i for i, (a, b) in enumerate(zip(picked, want)) if a != b), 16)
        print(f"\n{variant} {quant}: greedy equal for {same}/16 tokens")
        if quant == "f16":
            assert picked == want
        else:
            gap = (logits.max(-1).values - logits[torch.arange(16), picked]).max().item()
            assert gap < TOLERANCE[quant] * logits.abs().max().item()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chat_template_renders_and_tokenizes_as_training(built, variant, fmt):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from test_export_chat import CONVERSATION, TOOLS

    folder, path = built(variant, "f16", fmt)
    tok, llm = AutoTokenizer.from_pretrained(folder), load(path)
    cfg = Config(base_model=str(folder), data=DataConfig(prompt_format=fmt, chat=ChatConfig(tools=TOOLS)))
    renderer = make_renderer(cfg.data, tok)
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    [segments], _ = renderer.render({"messages": messages}, 0, "chat")
    trained_text = "".join(t for t, _ in segments)
    template = llm.metadata["tokenizer.chat_template"]
    bos = tok.bos_token if specials_of(tok).adds_bos else ""  # training's BOS, which the template writes
    formatter = Jinja2ChatFormatter(template, eos_token=tok.eos_token, bos_token=tok.bos_token or "", add_generation_prompt=False)
    assert formatter(messages=messages, tools=TOOLS).prompt == bos + trained_text
    [(trained_ids, _)] = encode_batch([segments], tok, specials_of(tok), end_with_eos=False)
    # the ids llama-cpp-python's chat mode sends for a generation prompt: the formatter's text,
    # tokenized without a BOS of its own (`add_bos=not added_special`), and training's up to the answer
    chat = Jinja2ChatFormatter(template, eos_token=tok.eos_token, bos_token=tok.bos_token or "")(messages=messages[:2], tools=TOOLS)
    sent = llm.tokenize(chat.prompt.encode(), add_bos=not chat.added_special, special=True)
    assert sent[:1] == trained_ids[:1] and trained_text.startswith(chat.prompt[len(bos):])
    if VARIANTS[variant][2] == "bpe":
        assert trained_ids[:len(sent)] == sent
    llama_ids = llm.tokenize(trained_text.encode(), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true", special=True)
    print(f"\n{variant} {fmt}: template equal; llama.cpp ids {'==' if llama_ids == trained_ids else '!='} training ids "
          f"({len(llama_ids)} tokens, first difference at {next((i for i, (a, b) in enumerate(zip(llama_ids, trained_ids)) if a != b), None)})")
    assert llama_ids == tok(trained_text)["input_ids"]  # llama.cpp's tokenizer is the model's own
    if VARIANTS[variant][2] == "bpe":  # GPT-2's split never joins across these segments: segment by segment = whole text
        assert llama_ids == trained_ids
    # Llama 3 / Qwen2 split patterns keep '.\n\n' together, SentencePiece-style tokenizers merge
    # across or put '▁' at the boundaries where training tokenizes each segment on its own:
    # docs/shipping.md has the measured differences (a training-side matter, the file is right).


@pytest.mark.parametrize("variant, fact", [("llama", "permute_qk"), ("gemma3", "norm_plus_one")])
def test_a_broken_export_is_caught(built, tmp_path, monkeypatch, variant, fact):
    """The bound is tight enough to matter: the same model written without one family fact (Llama's
    Q/K row order, Gemma's norm + 1) is off by more than its largest logit, 100x the f16 bound."""
    import dataclasses

    from transformers import AutoConfig

    from tunesmith.ship import gguf_arch

    folder, _ = built(variant, "f16")
    model_type = AutoConfig.from_pretrained(folder).model_type
    monkeypatch.setitem(gguf_arch.FAMILIES, model_type, dataclasses.replace(gguf_arch.FAMILIES[model_type], **{fact: False}))
    llm = load(export_gguf(folder, tmp_path / "broken.gguf", "f16", name="tiny"))
    ids = AutoTokenizer.from_pretrained(folder)(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        want = rounded_like_gguf(folder, "f16")(torch.tensor([ids])).logits[0].numpy()
    rel = float(np.abs(llama_logits(llm, ids) - want).max() / np.abs(want).max())
    print(f"\n{variant} without {fact}: max |logit diff| / max |logit| = {rel:.2f}")
    assert rel > 100 * TOLERANCE["f16"]


def llama_quantize(f16: Path, target: Path, ftype: int) -> Path:
    """What `llama-quantize F16 TARGET Q4_K_M` does, through the library the wheel ships."""
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(target).encode(), ctypes.byref(params)) == 0
    return target


def greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(ids)
    picked = []
    for _ in range(n):
        picked.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(picked[-1:])
    return picked


def test_q4_k_m_by_llama_cpps_quantizer(built, tmp_path):
    """`--quant q4_K_M` points at llama.cpp's quantizer: it accepts our f16 file (a Llama with rows of
    256, the Q4_K block) and writes Q4_K and Q6_K tensors, and the result loads and runs. (Accuracy
    on random weights says nothing: the demo model's test measures it on real ones.)"""
    from gguf import GGUFReader

    folder, _ = built("llama", "f16")
    wide = make_tiny_family("llama", folder, tmp_path / "wide", hidden_size=256, intermediate_size=512)
    f16 = export_gguf(wide, tmp_path / "wide-f16.gguf", "f16", name="tiny")
    q4 = llama_quantize(f16, tmp_path / "wide-q4_K_M.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    kinds = {t.tensor_type.name for t in GGUFReader(q4).tensors}
    assert {"Q4_K", "Q6_K"} <= kinds
    ids = AutoTokenizer.from_pretrained(wide)(PROMPTS[0])["input_ids"]
    logits = llama_logits(load(q4), ids)
    assert logits.shape == (len(ids), len(AutoTokenizer.from_pretrained(wide))) and np.isfinite(logits).all()
    print(f"\nq4_K_M (tensor types {sorted(kinds)}): {f16.stat().st_size // 1024} KiB -> {q4.stat().st_size // 1024} KiB")


@pytest.mark.demo_model
@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_K_M"])
def test_the_demo_model_in_llama_cpp(tmp_path, quant):
    """SmolLM2-135M-Instruct (the demo model, real weights): tokens, logits, greedy decoding, chat
    template. q4_K_M is made by llama.cpp's quantizer from our f16 file and compared with the
    unrounded model (its rounding is llama.cpp's, not reproducible in torch)."""
    from tunesmith.demo_model import demo_model_path
    from tunesmith.modelref import local_model

    folder = local_model(str(demo_model_path()))
    tok = AutoTokenizer.from_pretrained(folder)
    path = export_gguf(folder, tmp_path / f"smol-{quant}.gguf".replace("q4_K_M", "f16"), quant.replace("q4_K_M", "f16"), name="smollm2")
    if quant == "q4_K_M":
        path = llama_quantize(path, tmp_path / "smol-q4_K_M.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    llm, ref = load(path), rounded_like_gguf(folder, quant) if quant != "q4_K_M" else rounded_like_gguf(folder, "f32")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
        best = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None)[0, len(ids):].tolist()
    rel = float(np.abs(llama_logits(llm, ids) - want).max() / np.abs(want).max())
    picked = greedy(llm, ids, 24)
    with torch.no_grad():
        logits = ref(torch.tensor([ids + picked])).logits[0, len(ids) - 1:-1]
    gap = (logits.max(-1).values - logits[torch.arange(24), picked]).max().item()
    same = next((i for i, (a, b) in enumerate(zip(picked, best)) if a != b), 24)
    print(f"\ndemo model {quant}: {path.stat().st_size / 2**20:.0f} MB, max |logit diff| / max |logit| = {rel:.1e} "
          f"(max |logit| {np.abs(want).max():.1f}); greedy equal for {same}/24 tokens, worst pick {gap:.2f} below "
          f"transformers' best: {tok.decode(picked)!r}")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    assert llm.metadata["tokenizer.chat_template"] == tok.chat_template
    chat = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=tok.eos_token, bos_token=tok.bos_token)
    assert formatter(messages=chat).prompt == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    if quant == "f16":
        assert rel < TOLERANCE[quant] and picked == best
    elif quant == "q8_0":  # the first answer token is a near-tie ('The' 25.33, 'L' 25.24 in transformers)
        assert rel < TOLERANCE[quant] and gap < TOLERANCE[quant] * np.abs(want).max()
    else:  # measured 0.19 and picks within 0.5 logit of transformers' best on SmolLM2-135M: 4 bits cost that much here
        assert rel < 0.3 and gap < 1.0


@pytest.mark.parametrize("scheme", ["first", "always"])
def test_metaspace_tokenizers_differ_where_the_export_warns(built, tmp_path, capsys, scheme):
    """A Metaspace pre-tokenizer (Mistral v0.3 style): llama.cpp puts '▁' before text that starts with
    a space and, for prepend_scheme 'first', after every special token; the export says so, and
    everywhere else the ids are the same."""
    from tiny_families import metaspace_tokenizer

    tok_dir = metaspace_tokenizer(tmp_path / "tok", scheme)
    folder = make_tiny_family("llama", tok_dir, tmp_path / "m")
    llm = load(export_gguf(folder, tmp_path / "m.gguf", name="tiny"))
    warned = capsys.readouterr().err
    assert "adds a '▁' where this tokenizer (Metaspace) does not: before" in warned
    assert ("after each special token" in warned) == (scheme == "first")
    tok = AutoTokenizer.from_pretrained(folder)
    same = lambda text: llm.tokenize(text.encode(), add_bos=True, special=True) == tok(text)["input_ids"]  # noqa: E731
    assert same("Hello world, what is the capital of France?") and same("a  b\n\nc")
    assert not same(" leading space")
    assert same("<|im_start|>user\nhi there<|im_end|>") == (scheme == "always")
