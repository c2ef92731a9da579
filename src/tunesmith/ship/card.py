"""The model card: README.md with Hugging Face front matter, saying how the model was made.

Written into final/ and merged/ when training ends (and again by `push`, so later evaluations
appear). Every figure comes from the run's own files (prep_report.json, summary.json, eval/), and
the example prompt is decoded from the very ids the model was trained on.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from tunesmith.config.schema import Config
from tunesmith.ship.facts import example_rows, run_facts
from tunesmith.train.stages import read_stages

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "imagefolder", "audiofolder"}


def write_run_cards(cfg: Config, summary: dict) -> None:
    """After training: the cards of final/ and merged/, which quote the run's summary.json (main process only)."""
    from tunesmith.train.distributed import is_main_process

    if is_main_process():
        for folder in (summary["final"], summary["merged"]):
            if folder:
                write_card(folder, cfg, summary["output_dir"])


def write_card(folder: str | Path, cfg: Config, out_dir: str | Path | None = None) -> Path:
    """Write `folder`/README.md (and copy loss.png beside it); returns the card's path."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    facts = run_facts(cfg)
    if out_dir is not None:
        facts["output_dir"] = Path(out_dir)
    tokenizer = card_tokenizer(folder, cfg)
    examples = example_rows(facts["data_dir"], tokenizer, n=1) if tokenizer is not None else []
    is_adapter = (folder / "adapter_config.json").is_file()
    content = front_matter(cfg, is_adapter) + body(cfg, facts, examples, is_adapter, folder, tokenizer)
    ModelCard(content, ignore_metadata_errors=False)  # the Hub's parser must accept it: fail here, not on upload
    if facts["loss_png"] is not None:
        shutil.copyfile(facts["loss_png"], folder / "loss.png")
    tmp = folder / ".README.md.tmp"
    tmp.write_text(content)
    tmp.rename(folder / "README.md")
    return folder / "README.md"


def card_tokenizer(folder: Path, cfg: Config):
    from transformers import AutoTokenizer

    from tunesmith.modelref import local_model

    for ref in (folder, cfg.tokenizer, cfg.base_model):
        ref = local_model(str(ref)) if ref else None  # a .gguf base: its converted folder
        if ref and Path(ref, "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(ref)
    return None


def hub_base_model(ref: str) -> str | None:
    return ref if HUB_ID.match(ref) and not Path(ref).expanduser().exists() else None


def base_license(ref: str) -> str | None:
    """The base model's license where it is on disk: a .gguf's general.license, a folder's or the
    Hub cache's README front matter. Never fetched."""
    path = Path(ref).expanduser()
    try:
        if path.suffix == ".gguf" and path.is_file():
            from gguf import GGUFReader

            field = GGUFReader(path).fields.get("general.license")
            return str(field.contents()) if field is not None else None
        readme = path / "README.md" if path.is_dir() else None
        if readme is None and hub_base_model(ref):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "README.md")
            readme = Path(cached) if isinstance(cached, str) else None
        if readme is not None and readme.is_file():
            from huggingface_hub import ModelCard

            return ModelCard.load(readme).data.to_dict().get("license")
    except (OSError, ValueError):
        return None
    return None


def hub_datasets(cfg: Config) -> list[str]:
    sources = [s for s in (cfg.data.train, cfg.data.eval) if s is not None and s.path]
    return sorted({s.path for s in sources if s.path not in LOCAL_BUILDERS and HUB_ID.match(s.path)
                   and not Path(s.path).exists()})


def front_matter(cfg: Config, is_adapter: bool) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=hub_base_model(cfg.base_model), library_name="peft" if is_adapter else "transformers",
        license=base_license(cfg.base_model), datasets=hub_datasets(cfg) or None, pipeline_tag="text-generation",
        tags=["tunesmith", "text-generation", cfg.model.method if cfg.model.method != "full" else "full-fine-tune"],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def body(cfg: Config, facts: dict, examples: list[dict], is_adapter: bool, folder: Path, tokenizer) -> str:
    s, prep = facts["summary"] or {}, facts["prep"]
    parts = [f"# {cfg.name}\n",
             f"Fine-tuned from `{cfg.base_model}` with tunesmith "
             f"({'LoRA adapter' if is_adapter else 'full weights'}; method `{cfg.model.method}`).\n"]
    stages = read_stages(folder)
    if len(stages) > 1:
        parts.append(stages_section(stages))
    if prep:
        parts.append(data_section(prep))
    parts.append(prompt_section(cfg, examples, tokenizer))
    parts.append(training_section(cfg, s))
    parts.append(results_section(s, facts["evals"], facts["loss_png"] is not None))
    parts.append(usage_section(cfg, folder, is_adapter))
    return "\n".join(parts)


def data_section(prep: dict) -> str:
    lines = ["## Data\n", "| split | rows read | kept | dropped | cut | tokens | trained tokens | trained share | length p50 / p90 / max |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, sp in prep["splits"].items():
        lp = sp.get("length_pct", {})
        lines.append(f"| {name} | {sp['rows_read']:,} | {sp['rows_kept']:,} | {reasons(sp['dropped'])} | {reasons(sp['cut'])} | "
                     f"{sp['tokens']:,} | {sp['trained_tokens']:,} | {sp['trained_share']:.1%} | "
                     f"{lp.get('p50', 0)} / {lp.get('p90', 0)} / {lp.get('max', 0)} |")
    lines.append(f"\nmax_length {prep['max_length']}, overlength `{prep['overlength']}`. "
                 "Drops and cuts are counted by reason in `prep_report.json`; none are silent.\n")
    return "\n".join(lines)


def reasons(entries: dict) -> str:
    return ", ".join(f"{k}: {v['count']:,}" for k, v in entries.items()) or "0"


def prompt_section(cfg: Config, examples: list[dict], tokenizer) -> str:
    fmt = cfg.data.prompt_format if isinstance(cfg.data.prompt_format, str) else cfg.data.prompt_format.name
    lines = ["## Prompt format\n", f"Format `{fmt}`" + (" (the tokenizer's own chat template)" if fmt == "chat_template" else "") +
             ". Prompt the model with the text before the answer exactly as below; the loss was computed on the "
             "answer only" + (" (and the prompt: `train_on_prompt`)" if cfg.data.train_on_prompt else "") + ".\n"]
    if tokenizer is not None:
        from tunesmith.ship.ollama import PROMPT, prompt_parts

        before, after = prompt_parts(cfg, tokenizer, cfg.data.prompt.system_message)
        lines += ["The prompt around your input (`{input}`); the model writes its answer after it, and ends it with "
                  f"`{after.strip() or tokenizer.eos_token}`"
                  + (" (the tokenizer adds BOS first)" if tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id] else "") + ":\n",
                  fence(before.replace(PROMPT, "{input}")), ""]
    if examples:
        runs = examples[0]["runs"]
        first = next((k for k, (_, trained) in enumerate(runs) if trained), len(runs))
        prompt = "".join(t for t, _ in runs[:first])
        answer = "".join(t for t, _ in runs[first:])
        lines += ["A training example, decoded from the token ids it was trained on. The prompt (not trained):\n", fence(prompt),
                  "\nThe answer the model learned to write (trained tokens):\n", fence(answer)]
    return "\n".join(lines) + "\n"


def fence(text: str) -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}text\n{text}\n{ticks}"


def stages_section(stages: list[dict]) -> str:
    """The recipe, step by step: e.g. SFT on instructions, then DPO on preference pairs."""
    lines = ["## Training stages\n"]
    for i, st in enumerate(stages, 1):
        beta = f", beta {st['beta']:g}" if "beta" in st else ""
        lines.append(f"{i}. `{st.get('objective', '?')}`{beta} ({st.get('method', '?')}) on {st.get('data', '?')}, "
                     f"from `{st.get('base_model', '?')}` (run `{st.get('run', '?')}`)")
    return "\n".join(lines) + "\n"


def training_section(cfg: Config, s: dict) -> str:
    """The hyper-parameters the Trainer ran with: tunesmith's defaults filled in, as train/ resolves them."""
    from tunesmith.train.arguments import training_arguments

    args = training_arguments(cfg, has_eval=s.get("eval_loss") is not None)
    length = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
    rows = [("objective", s.get("objective")), ("reference", s.get("reference")),
            ("method", cfg.model.method), ("length", length), ("learning rate", f"{args.learning_rate:g}"),
            ("schedule", f"{args.lr_scheduler_type.value}, {args.warmup_steps} warm-up steps"),
            ("batch size x accumulation", f"{args.per_device_train_batch_size} x {args.gradient_accumulation_steps}"),
            ("weight decay", args.weight_decay), ("max_length", cfg.data.max_length), ("packing", cfg.data.packing),
            ("steps run", s.get("steps")), ("trained tokens", s.get("trained_tokens")),
            ("train time (s)", s.get("train_seconds")), ("tokens/s", s.get("tokens_per_second")),
            ("bf16", s.get("bf16")), ("attention", s.get("attention")), ("batching", s.get("batching"))]
    if cfg.model.trains_adapter:
        lora = cfg.model.lora
        rows.insert(1, ("LoRA r / alpha / dropout", f"{lora.r} / {lora.alpha} / {lora.dropout}"))
    shown = [(k, v) for k, v in rows if v is not None]
    return "## Training\n\n| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in shown) + "\n"


def results_section(s: dict, evals: list[dict], has_plot: bool) -> str:
    lines = ["## Results\n"]
    if s.get("first_loss") is not None:
        lines.append(f"Train loss {s['first_loss']:.4f} -> {s['final_loss']:.4f}"
                     + (f"; eval loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else "")
                     + (f" (perplexity {s['eval_perplexity']:.3f})" if s.get("eval_perplexity") is not None else "")
                     + ".\n")
    if s.get("rewards_accuracies") is not None:
        lines.append(f"Preference accuracy {s['rewards_accuracies']:.1%}, reward margin {s['rewards_margins']:.4f} at the "
                     "last logged step" + (f"; held out: {s['eval_rewards_accuracies']:.1%}, margin "
                                             f"{s['eval_rewards_margins']:.4f}" if s.get("eval_rewards_accuracies") is not None
                                             else "") + ".\n")
    if has_plot:
        lines.append("![loss curve](loss.png)\n")
    if evals:
        cols = [("eval_loss", "eval loss", "{:.4f}"), ("perplexity", "perplexity", "{:.3f}"),
                ("choice_accuracy", "choice accuracy", "{:.1%}"), ("exact_match", "exact match", "{:.1%}"),
                ("rouge_l", "ROUGE-L", "{:.4f}"), ("preference_accuracy", "preference accuracy", "{:.1%}"),
                ("logp_margin", "log-prob margin", "{:+.3f}")]
        cols = [c for c in cols if any(c[0] in e for e in evals)]
        lines += ["| model | rows | " + " | ".join(title for _, title, _ in cols) + " |", "|---" * (len(cols) + 2) + "|"]
        for e in evals:
            lines.append(f"| {e['label']} | {e.get('rows', '-')} | "
                         + " | ".join(f.format(e[k]) if k in e else "-" for k, _, f in cols) + " |")
    return "\n".join(lines) + "\n"


def usage_section(cfg: Config, folder: Path, is_adapter: bool) -> str:
    if is_adapter:
        code = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
                f'model = AutoPeftModelForCausalLM.from_pretrained("{folder.name}")  # or the Hub repo id\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{folder.name}")')
    else:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'model = AutoModelForCausalLM.from_pretrained("{folder.name}")  # or the Hub repo id\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{folder.name}")')
    return ("## Use it\n\n```python\n" + code + "\n```\n\nWith tunesmith, prompts are built by the training template: "
            f"`tunesmith generate CONFIG --model {folder.name}`; for llama.cpp / Ollama: "
            "`tunesmith export CONFIG --to ollama`.\n")
