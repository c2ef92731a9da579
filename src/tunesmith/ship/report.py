"""`tunesmith report`: report.html, one self-contained page of a run (no script, nothing fetched):
the data, rows with their trained tokens, the loss and eval curves, evaluations before/after with
the predictions that changed, speed, and the config (secrets masked). Charts are inline SVG, and
the run's loss.png is inlined as data.

Every figure taken from summary.json or prep_report.json carries `data-fact="file.key"`, so a test
(or a reader) can check the page against the files it was made from.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import yaml

from tunesmith.config.schema import Config
from tunesmith.data.tool_text import parts_of
from tunesmith.ship.facts import example_rows, masked, run_facts

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3;text-align:left}td.l,th.l,td.t{text-align:left}td.t{white-space:pre-wrap}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;word-break:break-all}
.trained{background:#c8f0c8;font-weight:600}.masked{color:#777}
.tool_call{color:#a0a}.tool_result{color:#088}.reasoning{color:#a60;font-style:italic}figure{margin:.5em 0}h2{border-bottom:1px solid #ddd}"""


def write_report(cfg: Config, target: str | Path | None = None) -> Path:
    facts = run_facts(cfg)
    target = Path(target) if target else facts["output_dir"] / "report.html"
    page = render_page(cfg, facts)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(page)
    tmp.rename(target)
    return target


def render_page(cfg: Config, facts: dict) -> str:
    from tunesmith.ship.card import card_tokenizer

    folder = Path(facts["summary"]["final"]) if facts["summary"] and facts["summary"].get("final") else Path(cfg.base_model)
    tokenizer = card_tokenizer(folder, cfg)
    examples = example_rows(facts["data_dir"], tokenizer) if tokenizer is not None else []
    sections = [f"<h1>{esc(cfg.name)}</h1><p>base model <code>{esc(cfg.base_model)}</code>, method "
                f"<code>{esc(cfg.model.method)}</code>, output <code>{esc(facts['output_dir'])}</code></p>",
                run_section(facts["summary"]), data_section(facts["prep"], facts["data_dir"]),
                examples_section(examples), curves_section(facts["loss_png"]), eval_section(facts["evals"]),
                "<h2>Config</h2><pre>" + esc(yaml.safe_dump(masked(cfg.model_dump(mode="json")), sort_keys=False)) + "</pre>"]
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>tunesmith report: " + esc(cfg.name)
            + f"</title><style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n")


def esc(x) -> str:
    return html.escape(str(x))


def fact(source: str, key: str, value, fmt: str = "{}") -> str:
    shown = "-" if value is None else (fmt.format(value) if not isinstance(value, bool) else str(value).lower())
    return f'<td data-fact="{source}.{key}">{esc(shown)}</td>'


def table(header: list[str], rows: list[str]) -> str:
    head = "".join(f"<th class=l>{esc(h)}</th>" if i == 0 else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>"


def run_section(s: dict | None) -> str:
    if not s:
        return "<h2>Run</h2><p>No summary.json yet: train first (<code>tunesmith train</code>).</p>"
    keys = [("wall_seconds", "wall time (s)", "{}"), ("train_seconds", "train time (s)", "{}"), ("steps", "steps", "{}"),
            ("tokens", "tokens", "{:,}"), ("trained_tokens", "trained tokens", "{:,}"),
            ("tokens_per_second", "tokens/s", "{:,}"), ("trained_tokens_per_second", "trained tokens/s", "{:,}"),
            ("first_loss", "first train loss", "{:.4f}"), ("final_loss", "final train loss", "{:.4f}"),
            ("eval_loss", "eval loss", "{:.4f}"), ("eval_perplexity", "eval perplexity", "{:.3f}"),
            ("objective", "objective", "{}"), ("reference", "reference", "{}"),
            ("rewards_accuracies", "preference accuracy (train, last log)", "{:.1%}"),
            ("rewards_margins", "reward margin (train, last log)", "{:.4f}"),
            ("eval_rewards_accuracies", "preference accuracy (eval)", "{:.1%}"),
            ("eval_rewards_margins", "reward margin (eval)", "{:.4f}"),
            ("peak_rss_mb", "peak RSS (MB)", "{:,}"), ("peak_gpu_mb", "peak GPU memory (MB)", "{:,}"),
            ("loss", "loss", "{}"), ("batching", "batching", "{}"), ("attention", "attention", "{}"),
            ("attention_per_example", "attention per example", "{}"), ("liger_kernels", "Liger kernels", "{}"),
            ("bf16", "bf16 autocast", "{}")]
    rows = [f"<td class=l>{esc(title)}</td>" + fact("summary", k, s.get(k), f) for k, title, f in keys if k in s]
    speedups = s.get("speedups") or {}
    rows += [f"<td class=l>speed-up {esc(name)}</td><td>applied</td>" for name in speedups.get("applied", [])]
    rows += [f"<td class=l>speed-up {esc(name)}</td>" + fact("summary", f"speedups.skipped.{name}", why)
             for name, why in speedups.get("skipped", {}).items()]
    return "<h2>Run: time, throughput, speed-ups</h2>" + table(["figure", "value"], rows)


def data_section(prep: dict | None, data_dir: Path) -> str:
    if not prep:
        return "<h2>Data</h2><p>No prep_report.json: run <code>tunesmith prep</code>.</p>"
    rows, reasons = [], []
    for name, sp in prep["splits"].items():
        lp = sp.get("length_pct", {})
        key = f"splits.{name}"
        rows.append(f"<td class=l>{esc(name)}</td>" + fact("prep", f"{key}.rows_read", sp["rows_read"], "{:,}")
                    + fact("prep", f"{key}.rows_kept", sp["rows_kept"], "{:,}") + fact("prep", f"{key}.tokens", sp["tokens"], "{:,}")
                    + fact("prep", f"{key}.trained_tokens", sp["trained_tokens"], "{:,}")
                    + fact("prep", f"{key}.trained_share", sp["trained_share"], "{:.1%}")
                    + "".join(fact("prep", f"{key}.length_pct.{p}", lp.get(p), "{}") for p in ("p50", "p90", "p99", "max")))
        for what in ("dropped", "cut"):
            for reason, v in sp[what].items():
                reasons.append(f"<td class=l>{esc(name)}</td><td class=l>{what}</td><td class=l>{esc(reason)}</td>"
                               + fact("prep", f"{key}.{what}.{reason}.count", v["count"], "{:,}")
                               + f"<td class=l>{esc(', '.join(map(str, v['rows'])))}</td>")
    out = "<h2>Data</h2>" + table(["split", "rows read", "kept", "tokens", "trained tokens", "trained share",
                                   "length p50", "p90", "p99", "max"], rows)
    out += ("<h3>Dropped and cut, by reason</h3>" + table(["split", "what", "reason", "rows", "first row indices"], reasons)
            if reasons else "<p>No row was dropped or cut.</p>")
    lengths = split_lengths(data_dir)
    if lengths:
        out += "<h3>Row lengths (tokens)</h3>" + svg_figure(plot_histogram, lengths, prep["max_length"])
    return out


def split_lengths(data_dir: Path) -> dict[str, list[int]]:
    import pyarrow.compute as pc
    from datasets import load_from_disk

    found = {}
    for split in ("train", "eval"):
        if (data_dir / split).is_dir():
            table = load_from_disk(str(data_dir / split)).with_format("arrow")[:]
            # preference pairs: both sides' lengths
            columns = [c for c in ("input_ids", "chosen_input_ids", "rejected_input_ids") if c in table.column_names]
            found[split] = [n for c in columns for n in pc.list_value_length(table[c]).to_pylist()]
    return found


def marked(text: str) -> str:
    """Escaped text with tool calls, tool results and reasoning in spans of their own class."""
    return "".join(f'<span class="{kind}">{esc(piece)}</span>' if kind else esc(piece) for piece, kind in parts_of(text))


def examples_section(examples: list[dict]) -> str:
    if not examples:
        return ""
    out = ["<h2>Training rows, trained tokens highlighted</h2><p>Tool calls in <span class=tool_call>purple</span>, "
           "tool results in <span class=tool_result>teal</span>, reasoning in <span class=reasoning>brown italics</span>.</p>"]
    for i, ex in enumerate(examples):
        body = "".join(f'<span class="{"trained" if trained else "masked"}">{marked(text)}</span>' for text, trained in ex["runs"])
        out.append(f"<h3>row {i}: {ex['tokens']} tokens, {ex['trained']} trained</h3><pre>{body}</pre>")
    return "\n".join(out)


def curves_section(loss_png: Path | None) -> str:
    """The run's own loss.png (train and eval loss per step, as in the model card), inlined."""
    if loss_png is None:
        return ""
    data = base64.b64encode(loss_png.read_bytes()).decode()
    return f'<h2>Loss</h2><figure><img alt="train and eval loss per step" src="data:image/png;base64,{data}"></figure>'


def eval_section(evals: list[dict]) -> str:
    if not evals:
        return ""
    cols = [(k, t, f) for k, t, f in [("eval_loss", "eval loss", "{:.4f}"), ("perplexity", "perplexity", "{:.3f}"),
                                      ("choice_accuracy", "choice accuracy", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"),
                                      ("rouge_l", "ROUGE-L", "{:.4f}"), ("rows", "rows", "{}"),
                                      ("preference_accuracy", "preference accuracy", "{:.1%}"),
                                      ("logp_margin", "log-prob margin", "{:+.3f}"), ("pairs", "pairs", "{}")]
            if any(k in e for e in evals)]
    rows = [f"<td class=l>{esc(e['label'])}</td>" + "".join(f"<td>{esc(f.format(e[k]) if k in e else '-')}</td>" for k, _, f in cols)
            for e in evals]
    out = "<h2>Evaluation</h2>" + table(["model", *[t for _, t, _ in cols]], rows)
    if len(evals) >= 2 and all("prediction" in p for e in (evals[0], evals[-1]) for p in e["predictions"]):
        before, after = evals[0], evals[-1]
        old = {p["row"]: p for p in before["predictions"]}
        changed = [(old[p["row"]], p) for p in after["predictions"] if p["row"] in old and old[p["row"]]["prediction"] != p["prediction"]]
        out += (f"<h3>Predictions that changed: {len(changed)} of {len(after['predictions'])} "
                f"({esc(before['label'])} -> {esc(after['label'])})</h3>")
        out += table(["row", "reference", before["label"], after["label"]],
                     [f"<td>{a['row']}</td>"
                      + "".join(f"<td class=t>{esc(visible(x))}</td>" for x in (a["reference"], b["prediction"], a["prediction"]))
                      for b, a in changed])
    return out


def visible(text: str) -> str:
    """Whitespace-only and empty answers are the usual ones to change: show them, not blank cells."""
    return text.replace("\n", "\u21b5\n") if text else "(empty)"


def svg_figure(plot, *args) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    plot(ax, *args)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return "<figure>" + svg[svg.index("<svg"):] + "</figure>"  # drop the XML prolog: the SVG sits inside HTML


def plot_histogram(ax, lengths: dict[str, list[int]], max_length: int) -> None:
    top = max(max(v) for v in lengths.values() if v)
    bins = min(40, max(top, 1))
    for split, values in lengths.items():
        ax.hist(values, bins=bins, range=(0, top), alpha=0.6, label=f"{split} ({len(values)} rows)")
    ax.set_xlabel(f"tokens per row (max_length {max_length})")
    ax.set_ylabel("rows")
    ax.legend()

