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
    if args.command == "prep":
        from tunesmith.data.prepare import prepare

        prepare(cfg)
    elif args.command == "preview":
        from tunesmith.data.preview import preview

        preview(cfg, n=args.n)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
