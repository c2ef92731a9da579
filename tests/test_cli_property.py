"""Property: any command, with configs, overrides and flags drawn from the schema (every key, every
TrainingArguments field, values of random types, paths that are missing, files where folders are
expected, read-only places), ends in success or in exit 2 with one message; never a traceback,
never a half-written output. CI runs a few examples (TUNESMITH_PROPERTY_EXAMPLES raises it)."""
from __future__ import annotations

import dataclasses
import enum
import io
import os
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from transformers import TrainingArguments

from helpers import write_jsonl
from tunesmith.cli import main
from tunesmith.config.schema import Config

EXAMPLES = int(os.environ.get("TUNESMITH_PROPERTY_EXAMPLES", "12"))
COMMANDS = ["check", "prep", "preview", "train", "run", "eval", "generate", "chat", "merge", "export", "report"]
# Keys that would reach outside this machine or run for minutes whatever their value: held fixed.
FIXED = {"push_to_hub", "hub_model_id", "hub_token", "torch_compile", "report_to", "model.upload_to", "max_steps",
         "num_train_epochs", "model.method", "base_model", "tokenizer", "data.train", "deepspeed", "fsdp",
         "fsdp_config", "accelerator_config", "model.resume", "resume_from_checkpoint", "data.num_proc",
         "dataloader_num_workers", "save_steps", "eval_steps", "logging_steps", "use_cpu", "data.max_length"}


def schema_fields(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, object]:
    """Every key of tunesmith's schema as a dotted name -> its annotation."""
    out = {}
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = prefix + name
        inner = [a for a in (typing.get_args(field.annotation) or [field.annotation]) if isinstance(a, type)
                 and issubclass(a, BaseModel)]
        out.update(schema_fields(inner[0], key + ".") if inner else {key: field.annotation})
    return out


TYPES = {**schema_fields(), **{f"training.{k}": v for k, v in typing.get_type_hints(TrainingArguments).items()
                               if k in {f.name for f in dataclasses.fields(TrainingArguments) if f.init}}}
KEYS = sorted(set(TYPES) - {f"training.{k}" for k in FIXED} - FIXED)


def typed(annotation) -> st.SearchStrategy | None:
    """Values of the annotation's own type (an enum's or Literal's members), None if it has none we draw."""
    options = []
    for a in (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType)
              else [annotation]):
        if typing.get_origin(a) is typing.Literal:
            options.append(st.sampled_from(typing.get_args(a)))
        elif isinstance(a, type) and issubclass(a, enum.Enum):
            options.append(st.sampled_from([m.value for m in a]))
        elif a is bool:
            options.append(st.booleans())
        elif a is int:
            options.append(st.integers(0, 64))
        elif a is float:
            options.append(st.floats(0, 2, allow_nan=False))
    return st.one_of(options) if options else None


def paths(tmp: Path) -> st.SearchStrategy[str]:
    return st.sampled_from([str(tmp / "missing"), str(tmp / "afile"), str(tmp / "folder"), "/proc/tunesmith", "rel/x"])


def values(tmp: Path) -> st.SearchStrategy:
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(-1e6, 1e6, allow_nan=False),
                       st.text(max_size=10), st.sampled_from(["1e-4", "8", "-1", "auto", "none", "linear", "chatml", ""]),
                       paths(tmp))
    return st.one_of(scalar, st.lists(scalar, max_size=2), st.dictionaries(st.text(max_size=5), scalar, max_size=2))


def set_dotted(cfg: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = cfg
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok_dir):
    from helpers import make_tiny_llama

    return make_tiny_llama(tok_dir, tmp_path_factory.mktemp("tiny") / "model", hidden=32, layers=1)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_command_ends_in_success_or_one_message(tmp_path_factory, model_dir, data):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "afile").write_text("x")
    (tmp / "folder").mkdir()
    shapes = {"sft": [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)],
              "pairs": [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(4)],
              "unpaired": [{"prompt": f"q{i}", "completion": f"a{i}", "label": i % 2 == 0} for i in range(4)]}
    write_jsonl(tmp / "t.jsonl", shapes[data.draw(st.sampled_from(sorted(shapes)), label="rows")])
    (tmp / "prompts.txt").write_text("hello\n")
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    cfg: dict = {"base_model": str(model_dir), "output_dir": str(tmp / "out"),
                 "data": {"train": {"data_files": "t.jsonl"}, "max_length": 64},
                 "model": {"method": data.draw(st.sampled_from(["full", "lora"]), label="method")},
                 "objective": data.draw(st.sampled_from(["sft", "dpo", "ipo", "simpo", "orpo", "kto"]), label="objective"),
                 "training": {"max_steps": 1, "logging_steps": 1, "save_steps": 1000, "report_to": "none"}}
    for key in data.draw(st.lists(st.sampled_from(KEYS), max_size=3, unique=True), label="keys"):
        own = typed(TYPES[key])  # mostly values of the key's own type, so runs get past validation
        strategy = st.one_of(own, own, own, values(tmp)) if own is not None else values(tmp)
        set_dotted(cfg, key, data.draw(strategy, label=key))
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    overrides = [f"{k}={v}" for k, v in data.draw(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(
        ["1", "x", "true", "[1, 2]", "{a: 1}", "", "1e-4", str(tmp / "missing")])), max_size=2), label="overrides")]
    argv = [command] + ([] if command in ("generate", "chat") and data.draw(st.booleans(), label="no config")
                        else [str(tmp / "c.yaml"), *overrides])
    model_flag = data.draw(st.sampled_from([None, str(model_dir), str(tmp / "missing"), str(tmp / "afile")]), label="--model")
    if command in ("eval", "generate", "chat", "export") and model_flag:
        argv += ["--model", model_flag]
    if command == "generate":
        argv += ["--prompts", data.draw(st.sampled_from([str(tmp / "prompts.txt"), str(tmp / "missing"), str(tmp / "folder")]))]
    if command in ("generate", "chat", "eval"):
        argv += ["--max-new-tokens", "2"]
    if command == "report" and data.draw(st.booleans(), label="--out"):
        argv += ["--out", data.draw(paths(tmp))]
    if command in ("train", "merge", "export", "report") and data.draw(st.booleans(), label="prepared first"):
        main(["prep" if command == "train" else "run", str(tmp / "c.yaml")])  # so the command gets past "not found"
    stdin, sys.stdin = sys.stdin, io.StringIO("hi\n")
    try:
        code = main(argv)  # anything but a TunesmithError propagates and fails the test
    finally:
        sys.stdin = stdin
    assert code in (0, 2), argv
    if os.environ.get("TUNESMITH_PROPERTY_SHOW"):
        print("RESULT", command, code, file=sys.__stderr__)
    leftovers = [p for p in tmp.rglob("*") if ".tmp" in p.name or p.name.startswith(".tunesmith-probe-")]
    assert not leftovers, leftovers
