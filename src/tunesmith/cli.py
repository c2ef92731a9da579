"""One command-line app: `tunesmith prep|preview|train|run|eval|generate|merge|init|demo CONFIG`.

User errors (TunesmithError) end with one message and exit status 2; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from tunesmith.errors import TunesmithError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune causal language models on your own data.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("config", help="YAML config file")
        sp.add_argument("overrides", nargs="*", help="KEY=VALUE overrides, e.g. data.max_length=1024")
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        return sp

    with_config("prep", "prepare (render, tokenize, mask) the data and write it to disk")
    with_config("train", "fine-tune base_model on the prepared data")
    with_config("run", "prep, then train: the whole job from one config")
    pv = with_config("preview", "print rendered examples with the trained tokens highlighted")
    pv.add_argument("-n", type=int, default=3, help="how many rows to show")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except TunesmithError as e:
        if args.debug:
            raise
        print(f"tunesmith: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tunesmith: interrupted", file=sys.stderr)
        return 130


def run_command(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.seed_compat:
        print("tunesmith: read a seed-style (two-step workflow) config; translated:", file=sys.stderr)
        for note in cfg.seed_compat:
            print(f"  - {note}", file=sys.stderr)
    if args.command == "prep":
        from tunesmith.data.prepare import prepare

        prepare(cfg)
    elif args.command in ("train", "run"):
        from tunesmith.train.arguments import check_training_keys
        from tunesmith.train.run import train

        check_training_keys(cfg.training)  # before spending time on data preparation
        if args.command == "run":
            from tunesmith.data.prepare import prepare

            prepare(cfg)
        train(cfg)
    elif args.command == "preview":
        from tunesmith.data.preview import preview

        preview(cfg, n=args.n)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
