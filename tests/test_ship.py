"""Shipping a trained model: the model card, GGUF export (round trip through transformers), the
Ollama Modelfile's template against the training rows, and push against a fake Hub."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import write_config, write_jsonl
from tunesmith.cli import main
from tunesmith.config import load_config
from tunesmith.errors import ModelError
from tunesmith.ship.gguf import export_gguf

PAIRS = [("color of the sky?", "blue"), ("capital of France?", "Paris"), ("2+2?", "4"), ("opposite of hot?", "cold"),
         ("first letter?", "A"), ("largest planet?", "Jupiter"), ("frozen water?", "ice"), ("fox says?", "unknown")]
ROWS = [{"prompt": f"Q: {q}\nA: ", "response": a} for q, a in PAIRS]
IDS = torch.tensor([[1, 54, 31, 226, 72, 84, 81, 5, 6, 100, 200, 300]])


def run_config(tmp_path: Path, base_model: Path, **data) -> Path:
    write_jsonl(tmp_path / "rows.jsonl", ROWS * 2)
    cfg = {"name": "toy", "base_model": str(base_model), "output_dir": "out",
           "data": {"train": {"data_files": "rows.jsonl", "split": "train[:12]"},
                    "eval": {"data_files": "rows.jsonl", "split": "train[12:]"}, "max_length": 64, **data},
           "model": {"method": "lora", "merge": True, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
           "training": {"max_steps": 8, "learning_rate": 1e-2, "per_device_train_batch_size": 4, "logging_steps": 2,
                        "eval_steps": 4, "save_steps": 1000}}
    return write_config(tmp_path / "cfg.yaml", cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama):
    """A LoRA run (merged too) on a base model whose README states a license, evaluated before and after."""
    root = tmp_path_factory.mktemp("ship_run")
    base = root / "base"
    shutil.copytree(tiny_llama, base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    cfg_path = run_config(root, base, prompt={"system_message": "Answer briefly."}, prompt_format="chatml")
    assert main(["run", str(cfg_path)]) == 0
    for label, model in (("before", []), ("after", ["--model", str(root / "out" / "final")])):
        assert main(["eval", str(cfg_path), *model, "--label", label, "--max-new-tokens", "6"]) == 0
    return cfg_path, root / "out"


def test_model_card_parses_and_states_the_run(trained):
    from huggingface_hub import ModelCard

    cfg_path, out = trained
    prep = json.loads((out / "data" / "prep_report.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    card = ModelCard.load(out / "final" / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"  # carried from the base model's card
    assert "base_model" not in meta  # a local folder is no Hub id: left out, not invented
    train = prep["splits"]["train"]
    for figure in (f"| train | {train['rows_read']:,} | {train['rows_kept']:,} |", f"{train['trained_tokens']:,}",
                   f"{train['trained_share']:.1%}", f"{summary['final_loss']:.4f}", f"| steps run | {summary['steps']} |",
                   "| length | 8 steps |", "| learning rate | 0.01 |", "| LoRA r / alpha / dropout | 4 / 8 / 0.0 |",
                   "AutoPeftModelForCausalLM", "![loss curve](loss.png)"):
        assert figure in card.text, figure
    # the example prompt is decoded from the trained ids: the chatml markers and the system message, then the answer
    assert "<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nQ: color of the sky?" in card.text
    assert (out / "final" / "loss.png").is_file()
    merged = ModelCard.load(out / "merged" / "README.md")
    assert merged.data.to_dict()["library_name"] == "transformers" and "AutoModelForCausalLM" in merged.text
    # the demo writes the card again after its evaluations: they appear with their figures
    from tunesmith.ship.card import write_card

    write_card(out / "final", load_config(cfg_path))
    after = json.loads((out / "eval" / "after" / "metrics.json").read_text())
    text = (out / "final" / "README.md").read_text()
    assert f"| after | {after['rows']} | {after['eval_loss']:.4f} |" in text


def rounded_like_gguf(model, quant: str):
    """The reference the GGUF must reproduce: the same weights rounded the way the file stores them."""
    import gguf

    model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim < 2:
                continue
            w = p.numpy()
            if quant == "q8_0":
                q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)))
            else:
                p.copy_(p.half().float())
    return model


@pytest.mark.parametrize("quant, tolerance", [("f16", 2e-3), ("q8_0", 5e-2)])
def test_gguf_round_trip_through_transformers(tmp_path, tiny_llama, quant, tolerance):
    gguf_path = export_gguf(tiny_llama, tmp_path / f"m-{quant}.gguf", quant)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        got, want = loaded(IDS).logits, original(IDS).logits
        rounded = rounded_like_gguf(tiny_llama, quant)(IDS).logits
    assert torch.allclose(got, rounded, atol=1e-5)  # exactly the stored weights, laid out right
    assert (got - want).abs().max() < tolerance  # and the rounding costs no more than the format's error
    # the tokenizer travels in the metadata: same ids, same chat template, same special tokens
    tok, ref = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_path.name), AutoTokenizer.from_pretrained(tiny_llama)
    text = "<|im_start|>user\nQuestion: what is the capital of France?<|im_end|>\n Answer: Paris.</s>"
    assert tok(text)["input_ids"] == ref(text)["input_ids"] and tok(text)["input_ids"][0] == ref.bos_token_id
    assert tok.chat_template == ref.chat_template and tok.eos_token == ref.eos_token


def test_gguf_export_refuses_an_unmapped_architecture(tmp_path, tok_dir):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    tok.save_pretrained(tmp_path / "neox")
    with pytest.raises(ModelError, match="does not write the 'gpt_neox' architecture: GPT-NeoX/Pythia"):
        export_gguf(tmp_path / "neox", tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf*"))  # nothing half-written


def modelfile_parts(text: str) -> tuple[str, str | None, list[str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', text, re.S)
    stops = [json.loads(m) for m in re.findall(r"^PARAMETER stop (.*)$", text, re.M)]
    return template, system.group(1) if system else None, stops


@pytest.mark.parametrize("data", [
    {"prompt_format": "chatml", "prompt": {"system_message": "Be brief."}},
    {"prompt_format": "chat_template"},
    {"prompt_format": "alpaca", "prompt": {"input_template": "Question: {text}"}},
    {"prompt_format": "llama2", "prompt": {"system_message": "You are terse."}},
    {"prompt_format": "plain", "prompt": {"examples": [{"input": "1+1?", "response": "2"}]}},
])
def test_modelfile_template_renders_the_training_prompt(tmp_path, tiny_llama, data):
    from datasets import load_from_disk

    from ollama_go import render_ollama
    from tunesmith.ship.ollama import jinja_chat_template, write_modelfile

    cfg_path = run_config(tmp_path, tiny_llama, **data)
    assert main(["prep", str(cfg_path)]) == 0
    cfg = load_config(cfg_path)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    template, system, stops = modelfile_parts(write_modelfile(cfg, tok, Path("toy-f16.gguf"), tmp_path / "Modelfile").read_text())
    assert system == (data.get("prompt") or {}).get("system_message")
    rows = load_from_disk(str(tmp_path / "out" / "data" / "train"))
    for row, source in zip(rows, ROWS):
        chat = [{"role": "user", "content": source["prompt"]}, {"role": "assistant", "content": source["response"]}]
        rendered = tok.bos_token + render_ollama(template, system, chat)  # BOS: added by llama.cpp
        assert row["full_text"] in (rendered, rendered + tok.eos_token), (row["full_text"], rendered)
    assert tok.eos_token in stops
    if data["prompt_format"] == "chat_template":
        return  # the GGUF keeps the tokenizer's own template, which training used
    # the chat template written into the GGUF (llama.cpp's chat mode) renders the same text, BOS included
    tok.chat_template = jinja_chat_template(cfg, tok)
    for row, source in zip(rows, ROWS):
        messages = [{"role": "user", "content": source["prompt"]}, {"role": "assistant", "content": source["response"]}]
        rendered = tok.apply_chat_template(messages, tokenize=False)
        assert row["full_text"] in (rendered, rendered + tok.eos_token), (row["full_text"], rendered)
        prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        assert rendered.startswith(prompt + source["response"])


def test_export_ollama_from_a_lora_adapter(trained, capsys):
    cfg_path, out = trained
    assert main(["export", str(cfg_path), "--to", "ollama", "--quant", "q8_0", "--model", str(out / "final")]) == 0
    gguf_path, modelfile = out / "export" / "toy-q8_0.gguf", out / "export" / "Modelfile"
    assert modelfile.read_text().startswith("FROM ./toy-q8_0.gguf\n")
    assert "ollama create toy" in capsys.readouterr().err
    from gguf import GGUFReader

    fields = GGUFReader(gguf_path).fields
    assert fields["general.name"].contents() == "toy" and fields["general.license"].contents() == "apache-2.0"
    from tunesmith.ship.ollama import jinja_chat_template  # chatml training: the file's template is chatml's render

    tok = AutoTokenizer.from_pretrained(out / "export", gguf_file=gguf_path.name)
    assert tok.chat_template == jinja_chat_template(load_config(cfg_path), tok)
    system_turn = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert system_turn == "<s><|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)  # the adapter merged in memory = merged/
    loaded = AutoModelForCausalLM.from_pretrained(out / "export", gguf_file=gguf_path.name, dtype=torch.float32)
    with torch.no_grad():
        assert (loaded(IDS).logits - merged(IDS).logits).abs().max() < 5e-2
    assert not list(out.glob(".export-merge-*"))  # the temporary merge is gone


class FakeHub:
    """Records what push asks of the Hub API."""
    calls: list = []

    def __init__(self, endpoint=None, token=None):
        self.endpoint, self.token = endpoint or "https://fake.hub", token

    def whoami(self):
        FakeHub.calls.append(("whoami", self.token))
        return {"name": "me"}

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        FakeHub.calls.append(("create_repo", repo_id, private))
        return f"https://fake.hub/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message, repo_type=None):
        FakeHub.calls.append(("create_commit", repo_id, sorted(op.path_in_repo for op in operations)))


def test_push_uploads_card_model_and_exports_privately(trained, monkeypatch):
    import huggingface_hub

    cfg_path, out = trained
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_test")
    FakeHub.calls = []
    assert main(["push", str(cfg_path), "--repo", "me/toy"]) == 0
    whoami, create, commit = FakeHub.calls
    assert whoami == ("whoami", "hf_secret_for_test") and create == ("create_repo", "me/toy", True)
    files = commit[2]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "loss.png"} <= set(files)  # merged/ wins
    assert "toy-q8_0.gguf" in files and "Modelfile" in files
    assert not any("secret" in p.read_text(errors="ignore") for p in (out / "merged").glob("*.md"))


def test_push_without_network_fails_first_with_one_message(trained, monkeypatch, capsys):
    import huggingface_hub

    cfg_path, _ = trained
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("created a repo offline"))
    assert main(["push", str(cfg_path), "--repo", "me/toy"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Hugging Face Hub" in err and "nothing was uploaded" in err and "Traceback" not in err
    # not offline mode but no route: a refused connection, caught the same way before anything is created
    from huggingface_hub import constants

    from tunesmith.ship.push import PushError, push

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(PushError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:9"):
        push(load_config(cfg_path), "me/toy", endpoint="http://127.0.0.1:9")
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["push", str(cfg_path), "--repo", "me/toy"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


@pytest.mark.demo_model
@pytest.mark.slow
def test_gguf_round_trip_on_the_demo_model(tmp_path):
    from tunesmith.demo_model import demo_model_path
    from tunesmith.modelref import local_model

    folder = local_model(str(demo_model_path()))
    ids = torch.tensor([[1, 504, 3458, 314, 2115, 28, 253, 1345]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(ids).logits
    for quant, tolerance in (("f16", 0.1), ("q8_0", 1.0)):  # of logits up to ~31: 0.3% and 3%
        path = export_gguf(folder, tmp_path / f"smol-{quant}.gguf", quant)
        with torch.no_grad():
            got = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)(ids).logits
            rounded = rounded_like_gguf(folder, quant)(ids).logits
        err = (got - want).abs().max().item()
        print(f"demo model {quant}: max |logit diff| {err:.4f} (max |logit| {want.abs().max():.1f}), "
              f"vs the same rounding done in torch {(got - rounded).abs().max():.2e}; {path.stat().st_size / 2**20:.0f} MB")
        assert torch.allclose(got, rounded, atol=1e-3)
        assert err < tolerance and torch.equal(got.argmax(-1), want.argmax(-1))
        path.unlink()


def tiny_qwen(tmp_path, tok_dir, family: str, head_dim: int | None = None) -> Path:
    import transformers

    tok = AutoTokenizer.from_pretrained(tok_dir)
    config_class = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    extra = {"head_dim": head_dim} if head_dim else {}
    config = config_class(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random biases and norms, so a tensor written in the wrong place shows
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(tmp_path / family)
    tok.save_pretrained(tmp_path / family)
    return tmp_path / family


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_gguf_round_trip_of_the_qwen_family(tmp_path, tok_dir, family):
    """Qwen2 (q/k/v biases) and Qwen3 (q/k norms): the GGUF file reads back through transformers' own
    GGUF loader to the same logits (f16 rounding only), biases and norms random so a misplaced one shows."""
    tiny_qwen(tmp_path, tok_dir, family)
    gguf_path = export_gguf(tmp_path / family, tmp_path / f"{family}.gguf", "f16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_path.name, dtype=torch.float32)
    assert loaded.config.model_type == family
    with torch.no_grad():
        got, rounded = loaded(IDS).logits, rounded_like_gguf(tmp_path / family, "f16")(IDS).logits
    assert torch.allclose(got, rounded, atol=1e-4), (got - rounded).abs().max()


def test_qwen3_heads_wider_than_hidden_over_heads_are_written(tmp_path, tok_dir):
    """Qwen3's head_dim (128 in the real models, wider than hidden/heads) goes into the metadata as
    key and value length, which llama.cpp reads; transformers' GGUF loader does not read it back
    (it assumes hidden/heads), so this is checked in the file itself."""
    from gguf import GGUFReader

    folder = tiny_qwen(tmp_path, tok_dir, "qwen3", head_dim=32)
    fields = GGUFReader(export_gguf(folder, tmp_path / "q3.gguf", "f16")).fields
    assert fields["qwen3.attention.key_length"].contents() == 32 and fields["qwen3.attention.value_length"].contents() == 32
    assert fields["qwen3.rope.dimension_count"].contents() == 32
