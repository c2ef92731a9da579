"""ARC-Easy questions as preference pairs: the correct choice (chosen) against each wrong one
(rejected), with the prompt the SFT example trains on (../arc_easy/preprocessing.py), so DPO
sharpens exactly what SFT taught. Questions 0-79 (the SFT example's training questions) give the
training pairs, 80-99 (held out by both examples) the evaluation pairs."""
import importlib.util
import json
from pathlib import Path

from datasets import Dataset, DatasetDict

ARC = Path(__file__).resolve().parent.parent / "arc_easy"


def _sft_preprocessing():
    spec = importlib.util.spec_from_file_location("arc_preprocessing", ARC / "preprocessing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.multiple_choice


def arc_pairs() -> DatasetDict:
    to_prompt = _sft_preprocessing()
    questions = [json.loads(line) for line in (ARC / "arc_easy_100.jsonl").read_text().splitlines()]
    splits = {"train": [], "test": []}
    for i, q in enumerate(questions):
        sft = to_prompt(q)  # {prompt, response}: the response is the correct choice
        for k, wrong in enumerate(q["choices"]):
            if k != q["gold"]:
                splits["train" if i < 80 else "test"].append(
                    {"prompt": sft["prompt"], "chosen": sft["response"], "rejected": wrong, "question": i})
    return DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()})
