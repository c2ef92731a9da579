"""Test helpers: a tiny byte-level BPE tokenizer trained on the spot, configs and data files."""
from __future__ import annotations

import json
from pathlib import Path

import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Question: what is the capital of France? Answer: Paris.",
    "Summarize the following conversation.", "Conversation: Alice: hi Bob! Bob: hello Alice, how are you?",
    "### Instruction:\nWrite a poem.\n\n### Response:\nRoses are red.", "USER: hello ASSISTANT: hi there",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4", "System: be brief\nUser: hi\nAssistant: yo",
    "Context: the sky is blue because of Rayleigh scattering.", "Options:\n - red\n - green\n - blue\nAnswer: blue",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()[]{}<>/\\|@#$%^&*-_=+~`",
]


def train_tokenizer(out_dir: Path, adds_bos: bool, pad_is_eos: bool = False) -> Path:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    if adds_bos:  # Llama-style: BOS first when special tokens are added
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>" if pad_is_eos else "<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out_dir)
    return out_dir


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def make_tiny_llama(tok_dir: Path, out_dir: Path, hidden: int = 64, layers: int = 2, seed: int = 0, tied: bool = True) -> Path:
    """A randomly initialised Llama-style model saved with its tokenizer: a base_model for tests."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def run_measuring_memory(cmd: list[str], **popen) -> tuple[int, float, float]:
    """(exit status, peak anonymous resident MB, peak RSS MB) of a command. The anonymous part
    (its heap) is sampled from /proc every 20 ms: RSS also counts the pages of memory-mapped
    files, which the kernel can drop at any time (Linux only)."""
    import os
    import subprocess
    import threading

    proc = subprocess.Popen(cmd, **popen)
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) / 1024)
            except OSError:
                return
            done.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    return proc.returncode, peak[0], usage.ru_maxrss / 1024
