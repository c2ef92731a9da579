"""A plain model folder -> one GGUF file that llama.cpp, Ollama and transformers (`gguf_file=`) read.

Built on the `gguf` package: its writer, its tensor-name map (HF module name -> GGUF name) and its
quantizer. No converter script is downloaded. The tokenizer goes into the metadata (gguf_vocab.py:
tokens, types, merges or scores, special ids, the BOS rule, the chat template), so the file runs
on its own. What differs by family (hyper-parameters, tensor transforms, rotary scaling) is in
gguf_arch.py.

Only families whose tensors we lay out exactly as llama.cpp expects are written, each checked in
llama.cpp itself (tests/test_runtime_gguf.py); others are refused with a message naming the
family and the reason, never written half right.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from tunesmith.errors import ModelError
from tunesmith.ship.gguf_arch import family_notes, family_of, rope_scaling, tensor_for_gguf, write_hparams
from tunesmith.ship.gguf_vocab import check_name, tokenizer_notes, write_tokenizer

QUANTS = ("f16", "q8_0")
Q8_BLOCK = 32  # q8_0 quantizes rows in blocks of 32 values


def export_gguf(folder: str | Path, target: str | Path, quant: str = "f16", name: str | None = None,
                license: str | None = None, chat_template: str | None = None) -> Path:
    """Write `target` (.gguf) from the model folder; written beside it and renamed when complete.
    `chat_template`: the one to write instead of the tokenizer's own (the training prompt format's)."""
    import gguf
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if quant not in QUANTS:
        raise ModelError(f"--quant {quant}: not a supported quantization", f"use one of {', '.join(QUANTS)}")
    config = AutoConfig.from_pretrained(folder)
    family = family_of(config)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    name = name or Path(folder).name
    check_name(name, tokenizer)
    for note in family_notes(config, family) + tokenizer_notes(tokenizer):
        print(f"tunesmith: warning: {note}", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    arch = getattr(gguf.MODEL_ARCH, family.arch)

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_name(name)
        write_hparams(writer, config, family)
        extra = rope_scaling(writer, config, family)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if license:
            writer.add_license(license)
        write_tokenizer(writer, tokenizer, config, chat_template or getattr(tokenizer, "chat_template", None))
        write_tensors(writer, model, config, family, arch, quant)
        for tensor_name, data in extra:  # rotary factors: f32, as llama.cpp reads them
            writer.add_tensor(tensor_name, data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.rename(target)  # complete or absent
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_tensors(writer, model, config, family, arch, quant: str) -> None:
    import gguf

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when output.weight is absent, as transformers does
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ModelError(f"GGUF export: no GGUF name for tensor {hf_name!r} in llama.cpp's {family.arch} layout",
                             "this model has parts the layout does not have; convert merged/ with llama.cpp's convert_hf_to_gguf.py")
        data = tensor_for_gguf(hf_name, gguf_name, tensor.detach().float().numpy(), config, family)
        add_tensor(writer, f"{gguf_name}.{suffix}", data, quant)


def add_tensor(writer, name: str, data: np.ndarray, quant: str) -> None:
    """Norms and other 1-D tensors stay f32 (as llama.cpp writes them); matrices go to f16 or q8_0."""
    import gguf

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, or rows that do not fill q8_0 blocks
        writer.add_tensor(name, data.astype(np.float16))
