"""What a run leaves behind: final/, merged/ (with the prompt settings), loss.png, run_config.yaml, summary.json, and an upload."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tunesmith.config.schema import Config
from tunesmith.config.secrets import mask_url
from tunesmith.data.prompt_settings import PROMPT_FILE, settings_text
from tunesmith.errors import ConfigError, OutputError
from tunesmith.hf import complete_folder, save_folder
from tunesmith.train.distributed import barrier, is_distributed, is_main_process
from tunesmith.train.metrics import read_metrics
from tunesmith.train.stages import STAGES_FILE, stages_text


def save_final(trainer, tokenizer, out: Path, cfg: Config) -> Path:
    """The trained model (or LoRA adapter) with its tokenizer and generation config, atomically.

    Every process takes part: the Trainer's save path gathers whole weights from sharded engines
    (FSDP's full state dict, ZeRO-3's 16-bit gather) and only the main process writes."""
    target, tmp = out / "final", out / ".final.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    trainer.save_model(str(tmp))
    if is_main_process():
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle of every training setting, tokens included
        extra = {"tunesmith_base_model.txt": cfg.base_model + "\n"} if cfg.model.trains_adapter else {}
        complete_folder(tmp, target, trainer.model, tokenizer, {**extra, **model_files(cfg)})
    barrier()
    return target


def save_merged(trainer, tokenizer, out: Path, cfg: Config) -> Path:
    """LoRA folded into the base weights: a plain model folder. Under several processes the
    weights in memory may be shards, and under QLoRA a 4-bit base (merging into it would round the
    adapter into 4 bits and save a quantized model), so the main process merges the saved adapter
    into the base loaded at full precision instead."""
    target = out / "merged"
    if not is_distributed() and cfg.model.method != "qlora":
        return save_folder(trainer.model.merge_and_unload(), tokenizer, target, model_files(cfg))
    if is_main_process():
        from tunesmith.infer.merge import merge

        merge(cfg, str(out / "final"), str(target))
    barrier()
    return target


def model_files(cfg: Config) -> dict[str, str]:
    """What every model folder of a run carries besides weights and tokenizer: the prompt settings,
    so eval, generate and chat prompt the model as it was trained without the config; and the
    training stages (SFT, then preference tuning) it went through."""
    return {PROMPT_FILE: settings_text(cfg.data, cfg.train_data or cfg.resolved_data_dir()), STAGES_FILE: stages_text(cfg)}


def write_run_config(cfg: Config, out: Path) -> None:
    """The resolved config, credentials masked; a header lists them so the run can be reproduced."""
    from tunesmith.config.secrets import MASK, mask

    out.mkdir(parents=True, exist_ok=True)
    masked, paths = mask(cfg.model_dump(mode="json"))
    header = "".join(f"# masked ({MASK}): {p}\n" for p in paths)
    if header:
        header = "# credentials are not written here; supply these values again to reproduce the run:\n" + header
    (out / "run_config.yaml").write_text(header + yaml.safe_dump(masked, sort_keys=False))


def plot_losses(metrics_path: Path, png: Path) -> Path | None:
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (per trained token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def upload(out: Path, urls: list[str]) -> None:
    """Copy the output folder (checkpoints excluded) to each fsspec URL."""
    import fsspec

    for url in urls:
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise ConfigError(f"model.upload_to: cannot open {url!r}: {e}", "install the fsspec backend, e.g. s3fs") from None
        try:
            for path in out.rglob("*"):
                if path.is_file() and "checkpoints" not in path.relative_to(out).parts:
                    target = f"{root.rstrip('/')}/{path.relative_to(out).as_posix()}"
                    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                    fs.put_file(str(path), target)
        except Exception as e:  # each backend raises its own (botocore, gcsfs, aiohttp, OSError): all the user's to fix
            raise OutputError(f"model.upload_to: copying the run to {mask_url(url)} failed: {type(e).__name__}: "
                              f"{mask_url(str(e))}", f"the run itself is complete in {out}; check the URL and the "
                              "credentials (environment or the backend's config), then copy the folder again") from None
