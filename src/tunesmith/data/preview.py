"""`tunesmith preview`: show what the model will learn from, before any compute is spent."""
from __future__ import annotations

import itertools

from rich.console import Console
from rich.text import Text

from tunesmith.config.schema import Config
from tunesmith.data.pairs import PairRenderer, fit_row
from tunesmith.data.rows import ROW, RowProcessor, dataset_format, render_setup
from tunesmith.data.sources import load_source
from tunesmith.data.tokenize import encode_batch, fit_length
from tunesmith.data.tool_text import parts_of
from tunesmith.errors import ConfigError
from tunesmith.hf import IGNORE

OPEN, CLOSE = "\u27e6", "\u27e7"  # marks trained text when colour is off
PART_COLOURS = {"tool_call": "magenta", "tool_result": "cyan", "reasoning": "yellow"}


def preview(cfg: Config, n: int = 3, console: Console | None = None) -> list[dict]:
    console = console or Console()
    d = cfg.data
    renderer = render_setup(cfg)
    tokenizer, specials = renderer.tokenizer, renderer.specials
    if d.train is None:
        raise ConfigError("data.train: required key is missing", "preview shows rows of the training source")
    ds = load_source(d.train, "data.train")
    ds = ds.select(range(min(n, len(ds))))
    processor = None if cfg.objective.data_kind else \
        RowProcessor(renderer, dataset_format(d.format, ds.column_names, d.columns, renderer.preprocess is not None))
    shown = []
    colour = console.is_terminal and not console.no_color
    if not colour:
        console.print(f"(trained tokens are shown between {OPEN} and {CLOSE})")
    else:
        console.print("(trained tokens in bold: answers green, tool calls magenta, reasoning yellow; "
                      "masked ones dim, tool results cyan)")
    if cfg.objective.data_kind:  # preference rows: each side as training renders it
        return preview_pairs(console, renderer, ds, cfg.objective.data_kind, colour)
    for i, row in enumerate(ds):
        examples, _ = processor.render({k: v for k, v in row.items() if k != ROW}, i)
        for part, segments in enumerate(examples):
            label = f"row {i}" + (f", turn example {part + 1} of {len(examples)}" if len(examples) > 1 else "")
            shown.append({"row": i, "part": part, **show_example(console, tokenizer, specials, segments, d, label, colour, i)})
    return shown


def preview_pairs(console: Console, renderer, ds, kind: str, colour: bool) -> list[dict]:
    """Both sides of each pair (or the one side and its label of an unpaired row), with the length
    policy applied to the pair as prep applies it."""
    pairs, shown = PairRenderer(renderer), []
    policy = "truncate" if renderer.data.overlength == "truncate" else "drop"
    for i, row in enumerate(ds):
        fitted = fit_row(pairs, {k: v for k, v in row.items() if k != ROW}, i, kind, policy)
        names = ["chosen", "rejected"] if kind == "pairs" else ["desirable" if fitted.label else "undesirable"]
        for name, enc in zip(names, fitted.sides):
            facts = show_encoded(console, renderer.tokenizer, enc, fitted.drop, f"row {i}, {name}", colour, renderer.data.max_length)
            shown.append({"row": i, "side": name, **facts})
    return shown


def show_example(console: Console, tokenizer, specials, segments, d, label: str, colour: bool, i: int) -> dict:
    (ids, labels), = encode_batch([segments], tokenizer, specials)
    enc = fit_length(ids, labels, d.max_length, "truncate" if d.overlength == "truncate" else "drop", specials, i)
    return show_encoded(console, tokenizer, enc, enc.drop, label, colour, d.max_length)


def show_encoded(console: Console, tokenizer, enc, drop: str, label: str, colour: bool, max_length: int) -> dict:
    """One example's rule line (tokens, trained, masked, dropped or cut) and its highlighted text."""
    trained = sum(1 for x in enc.labels if x != IGNORE)
    note = {"too_long": f"  [red]dropped: over max_length {max_length}[/red]",
            "no_trained_tokens": "  [red]dropped: no trained token[/red]"}.get(drop, f"  [red]dropped: {drop}[/red]" if drop else "")
    note += f"  [yellow]cut: {enc.cut}[/yellow]" if enc.cut else ""
    console.rule(f"{label}: {len(enc.input_ids)} tokens, {trained} trained ({len(enc.input_ids) - trained} masked){note}")
    console.print(highlight(tokenizer, enc.input_ids, enc.labels, colour), soft_wrap=True)
    return {"tokens": len(enc.input_ids), "trained": trained, "drop": drop, "cut": enc.cut}


def highlight(tokenizer, ids: list[int], labels: list[int], colour: bool) -> Text:
    """Decode runs of same-mask tokens; trained runs in green (or between markers)."""
    out = Text()
    pos = 0
    for trained, run in itertools.groupby(range(len(ids)), key=lambda k: labels[k] != IGNORE):
        run = list(run)
        piece = tokenizer.decode(ids[pos:pos + len(run)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        pos += len(run)
        if not colour:
            out.append(f"{OPEN}{piece}{CLOSE}" if trained else piece)
            continue
        for text, kind in parts_of(piece):  # tool calls, tool results and reasoning in their own colours
            style = ("bold " if trained else "dim ") + PART_COLOURS.get(kind, "green" if trained else "")
            out.append(text, style=style.strip())
    return out
