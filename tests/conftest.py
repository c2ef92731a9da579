import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import make_tiny_llama, train_tokenizer  # noqa: E402



@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    """GPT-2 style: no BOS added; pad is its own token."""
    return train_tokenizer(tmp_path_factory.mktemp("tok_plain"), adds_bos=False)


@pytest.fixture(scope="session")
def bos_tok_dir(tmp_path_factory) -> Path:
    """Llama style: BOS added first; pad == eos (the case that breaks EOS training elsewhere)."""
    return train_tokenizer(tmp_path_factory.mktemp("tok_bos"), adds_bos=True, pad_is_eos=True)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, bos_tok_dir) -> Path:
    """Random-init Llama (2 layers, hidden 64) with the BOS-adding tokenizer."""
    return make_tiny_llama(bos_tok_dir, tmp_path_factory.mktemp("tiny_llama"))
