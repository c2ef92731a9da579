"""`tunesmith export CONFIG --to gguf|ollama [--quant f16|q8_0]`: the trained model as a GGUF file in
<output_dir>/export/, plus an Ollama Modelfile for `--to ollama`.

`--quant q4_K_M` is answered with the commands that make it: the `gguf` package can read K-quants
but not write them, and Q4_K_M mixes Q4_K and Q6_K by tensor as only llama.cpp's quantizer does
(tests/test_runtime_gguf.py runs that quantizer on our f16 file).

A LoRA run without merged/ is merged first (into a temporary folder, removed afterwards), since
llama.cpp runs plain weights.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from transformers import AutoTokenizer

from tunesmith.config.schema import Config
from tunesmith.data.prompts import CHAT_TEMPLATE
from tunesmith.errors import ConfigError, ModelError
from tunesmith.ship.card import base_license
from tunesmith.ship.gguf import export_gguf
from tunesmith.ship.ollama import jinja_chat_template, write_modelfile

TARGETS = ("gguf", "ollama")
LLAMA_CPP_QUANTS = ("q4_K_M",)  # accepted, answered with the llama.cpp command that makes them


def export(cfg: Config, to: str, quant: str = "f16", model: str | None = None) -> dict[str, Path]:
    if to not in TARGETS:
        raise ConfigError(f"--to {to}: unknown export target", f"use one of {', '.join(TARGETS)}")
    out = Path(cfg.resolved_output_dir())
    folder = Path(model) if model else (out / "merged" if (out / "merged" / "config.json").is_file() else out / "final")
    if not folder.is_dir():
        raise ModelError(f"nothing to export: {folder} not found", "train first (`tunesmith train CONFIG`) or pass --model FOLDER")
    target = out / "export" / f"{cfg.name}-{quant}.gguf"
    if quant in LLAMA_CPP_QUANTS:
        f16 = target.with_name(f"{cfg.name}-f16.gguf")
        raise ModelError(f"--quant {quant}: the gguf package tunesmith writes with cannot quantize to {quant} (only llama.cpp's quantizer can)",
                         f"export f16, then quantize with llama.cpp: `tunesmith export CONFIG --to {to} --quant f16 && "
                         f"llama-quantize {f16} {target} {quant.upper()}`" + (
                             f"; or let Ollama do it: `ollama create {cfg.name} -f {out / 'export' / 'Modelfile'} --quantize {quant}`"
                             if to == "ollama" else ""))
    target.parent.mkdir(parents=True, exist_ok=True)  # --model may name a folder outside a run that never wrote here
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-merge-") as tmp:
        plain = merged_copy(cfg, folder, Path(tmp)) if (folder / "adapter_config.json").is_file() else folder
        tokenizer = AutoTokenizer.from_pretrained(plain)
        # llama.cpp's chat mode reads the template from the file: make it the format the model was trained with
        template = None if cfg.data.prompt_format == CHAT_TEMPLATE else jinja_chat_template(cfg, tokenizer)
        written = {"gguf": export_gguf(plain, target, quant, name=cfg.name, license=base_license(cfg.base_model),
                                       chat_template=template)}
        if to == "ollama":
            written["modelfile"] = write_modelfile(cfg, tokenizer, target, out / "export" / "Modelfile")
    for path in written.values():
        print(f"tunesmith: wrote {path}", file=sys.stderr)
    if to == "ollama":
        print(f"run it: ollama create {cfg.name} -f {written['modelfile']} && ollama run {cfg.name}", file=sys.stderr)
    return written


def merged_copy(cfg: Config, adapter: Path, tmp: Path) -> Path:
    from tunesmith.infer.merge import merge

    print(f"tunesmith: {adapter} is a LoRA adapter: merging it into its base for export", file=sys.stderr)
    return merge(cfg, str(adapter), str(tmp / "merged"))

