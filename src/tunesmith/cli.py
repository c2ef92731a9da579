"""One command-line app: `tunesmith check|prep|preview|train|run|eval|generate|chat|merge|export|push|report|init|demo CONFIG`.

eval, generate and chat also run without CONFIG on `--model FOLDER`: a model tunesmith saved
carries the prompt settings it was trained with.

User errors (TunesmithError) end with one message and exit status 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunesmith.errors import TunesmithError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune causal language models on your own data.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str, optional: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        if optional:  # a model folder carries its prompt settings
            sp.add_argument("config", nargs="?", help="YAML config file (default: the prompt settings saved with --model)")
        else:
            sp.add_argument("config", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, e.g. data.max_length=1024")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        return sp

    with_config("check", "preflight in seconds: config, sources, a sample rendered and tokenized, estimates")
    with_config("prep", "prepare (render, tokenize, mask) the data and write it to disk")
    with_config("train", "fine-tune base_model on the prepared data")
    with_config("run", "prep, then train: the whole job from one config")
    pv = with_config("preview", "print rendered examples with the trained tokens highlighted")
    pv.add_argument("-n", type=int, default=3, help="how many rows to show")
    ev = with_config("eval", "eval loss/perplexity, exact match, ROUGE-L, multiple-choice accuracy", optional=True)
    ev.add_argument("--model", help="final/, merged/ or a LoRA adapter folder (default: base_model)")
    ev.add_argument("--data", help="rows to evaluate on (.jsonl, .json, .csv, .parquet) instead of the config's "
                                   "held-out rows; needed without a config")
    ev.add_argument("--label", help="name for this model in the table and eval/ folder")
    ev.add_argument("--max-rows", type=int, help="evaluate at most this many held-out rows")
    ev.add_argument("--max-new-tokens", type=int, default=48)
    ev.add_argument("--batch-size", type=int, default=16, help="prompts generated together (batched by length)")
    gen = with_config("generate", "answer prompts (JSON rows or plain lines, from a file or stdin)", optional=True)
    gen.add_argument("--model", help="final/, merged/ or a LoRA adapter folder (default: base_model)")
    gen.add_argument("--prompts", default="-", help="file of prompts, one per line; - for stdin")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--batch-size", type=int, default=16, help="prompts generated together (batched by length)")
    ch = with_config("chat", "talk to a model in the terminal (same template as training)", optional=True)
    ch.add_argument("--model", help="final/, merged/ or a LoRA adapter folder (default: base_model)")
    ch.add_argument("--max-new-tokens", type=int, default=256)
    ch.add_argument("--tools", help="a JSON file of tool schemas to offer the model (default: data.chat.tools)")
    mg = with_config("merge", "fold a LoRA adapter into its base model and save a plain model folder")
    mg.add_argument("--adapter", help="adapter folder (default: <output_dir>/final)")
    mg.add_argument("--out", help="where to write (default: <output_dir>/merged)")
    ex = with_config("export", "write the trained model as a GGUF file (llama.cpp), or GGUF + Modelfile (Ollama)")
    ex.add_argument("--to", choices=["gguf", "ollama"], default="gguf")
    ex.add_argument("--quant", choices=["f16", "q8_0", "q4_K_M"], default="f16")
    ex.add_argument("--model", help="model folder (default: merged/, else final/; a LoRA adapter is merged first)")
    pu = with_config("push", "upload the model, its card and exported files to a Hugging Face Hub repo (private)")
    pu.add_argument("--repo", required=True, help="user/name or org/name")
    pu.add_argument("--folder", help="model folder to push (default: merged/, else final/)")
    pu.add_argument("--public", action="store_true", help="make a new repository public (default: private)")
    rp = with_config("report", "write report.html: one self-contained page of the run")
    rp.add_argument("--out", help="where to write (default: <output_dir>/report.html)")
    it = sub.add_parser("init", help="write a commented config template to fill in")
    it.add_argument("dir", nargs="?", default=".")
    it.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    dm = sub.add_parser("demo", help="fine-tune the demo model on ARC-Easy and show before/after")
    dm.add_argument("config", nargs="?", help="default: examples/arc_easy/cpu.yaml")
    dm.add_argument("overrides", nargs="*")
    dm.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except TunesmithError as e:
        if args.debug:
            raise
        from tunesmith.config.secrets import mask_text

        where = f" (process {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"tunesmith: error{where}: {mask_text(str(e), getattr(args, 'secrets', []))}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2, or 128 + signal when a signal stopped training
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130


def run_command(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.config.secrets import secret_values

    if args.command == "init":
        return init(args.dir)
    if args.command == "demo":
        from tunesmith.demo import run_demo

        run_demo(args.config, args.overrides)
        return 0
    from tunesmith.config.paths import check_command_paths

    if args.config is None:  # eval, generate, chat: the prompt settings come from --model
        check_command_paths(args.command, args, None, None)
        return run_model_command(args, None)
    cfg = load_config(args.config, args.overrides)
    check_command_paths(args.command, args, cfg.resolved_output_dir(), cfg.resolved_data_dir())
    args.secrets = secret_values(cfg.model_dump(mode="json"))  # masked in any message printed below
    if cfg.seed_compat and os.environ.get("RANK", "0") == "0":  # said once under a launcher
        print(f"tunesmith: read a config in {cfg.compat_source} form; translated:", file=sys.stderr)
        for note in cfg.seed_compat:
            print(f"  - {note}", file=sys.stderr)
    if args.command == "check":
        from tunesmith.check import check

        check(cfg)
    elif args.command == "prep":
        from tunesmith.data.prepare import prepare

        prepare(cfg)
    elif args.command in ("train", "run"):
        from tunesmith.train.run import train

        if args.command == "run" or cfg.compat_source == "llm-foundry":  # foundry's train.py prepares data too
            from tunesmith.data.prepare import prepare
            from tunesmith.train import distributed
            from tunesmith.config.training_keys import check_training_keys

            check_training_keys(cfg.training)  # before spending time on data preparation (train checks again)
            # Under a launcher the main process prepares the data once; the others wait, then read it.
            distributed.init_process_group(cfg.training.get("ddp_timeout", 1800))
            if distributed.is_main_process():
                prepare(cfg)
            distributed.barrier()
        summary = train(cfg)
        finish_run(cfg, summary)
    elif args.command == "preview":
        from tunesmith.data.preview import preview

        preview(cfg, n=args.n)
    elif args.command in ("eval", "generate", "chat"):
        return run_model_command(args, cfg)
    elif args.command == "merge":
        from tunesmith.infer.merge import merge
        from tunesmith.ship.card import write_card

        merged = merge(cfg, args.adapter, args.out)
        write_card(merged, cfg)
        print(merged)
    elif args.command == "export":
        from tunesmith.ship.export import export

        export(cfg, args.to, args.quant, args.model)
    elif args.command == "push":
        from tunesmith.ship.push import push

        print(push(cfg, args.repo, args.folder, args.public))
    elif args.command == "report":
        from tunesmith.ship.report import write_report

        print(write_report(cfg, args.out))
    return 0


def run_model_command(args: argparse.Namespace, cfg) -> int:
    """eval, generate, chat: with a config, or (cfg None) with the prompt settings saved in --model."""
    if args.command == "eval":
        from tunesmith.infer.evaluate import evaluate

        evaluate(cfg, args.model, args.label, args.max_rows, args.max_new_tokens, batch_size=args.batch_size,
                 data_file=args.data)
    elif args.command == "generate":
        from tunesmith.infer.generate import run_generate

        run_generate(cfg, args.model, args.prompts, args.max_new_tokens, args.batch_size)
    elif args.command == "chat":
        from tunesmith.infer.chat import chat

        from tunesmith.config.load import read_tools_file

        tools = read_tools_file(args.tools, "--tools") if args.tools else None
        chat(cfg, args.model, args.max_new_tokens, tools=tools)
    return 0


def init(folder: str) -> int:
    from pathlib import Path

    from tunesmith.errors import ConfigError

    target = Path(folder) / "config.yaml"
    if target.exists():
        raise ConfigError(f"{target} already exists", "choose another folder; tunesmith never overwrites your config")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text((Path(__file__).parent / "templates" / "config.yaml").read_text())
    print(f"wrote {target}: fill in base_model and data.train, then `tunesmith preview {target}`")
    return 0


def finish_run(cfg, summary: dict) -> None:
    """What follows training: the model cards (they quote the run's figures), then model.upload_to."""
    from tunesmith.ship.card import write_run_cards
    from tunesmith.train.artifacts import upload
    from tunesmith.train.distributed import is_main_process

    write_run_cards(cfg, summary)
    if cfg.model.upload_to and is_main_process():
        upload(Path(summary["output_dir"]), cfg.model.upload_to)


def leave_process_group() -> None:
    """Under a launcher, destroy the process group before the interpreter exits: left to exit, a
    process can abort while gloo's threads are torn down ("terminate called without an active
    exception", SIGABRT), and the launcher then kills the others. At exit only, after the last
    command: a process that runs several commands keeps its group between them."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def run(argv: list[str] | None = None) -> None:
    """The process's entry point (the `tunesmith` script, `python -m tunesmith.cli`, `.finetune`,
    `.dataprep`): one command, then leave the process group and exit with the command's status."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    code = main(argv)
    leave_process_group()
    sys.exit(code)


if __name__ == "__main__":
    run()
