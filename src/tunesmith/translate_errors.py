"""Library exceptions raised on the user's input -> one TunesmithError naming the file, key and fix.

`datasets`, fsspec, pandas, pyarrow, safetensors and peft each raise their own types, often
wrapped (DatasetGenerationError around a pandas ParserError, StopIteration for an empty file).
These helpers walk the whole cause chain, so a wrapper's type never hides the real problem.
The original exception stays chained: `--debug` shows the library's traceback.
"""
from __future__ import annotations

import errno
import glob
import os
import re
from pathlib import Path

from tunesmith.errors import DataError, ModelError

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG}
AUTH_WORDS = re.compile(r"credential|accessdenied|access denied|forbidden|unauthorized|invalidaccesskey|signaturedoesnotmatch"
                        r"|expiredtoken|authentication|\((401|403)\)|\b(status|code|http)\W{0,3}(401|403)\b")
SPLIT_WORDS = ("unknown split", "percent slice", "unrecognized instruction format", "no instructions could be built",
               "split name should match", "subsplit")  # datasets' split and slice errors


def causes(e: BaseException) -> list[BaseException]:
    """The exception and everything it was raised from, outermost first."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


def _named(chain: list[BaseException], *names: str) -> BaseException | None:
    return next((c for c in chain if type(c).__name__ in names), None)


def matched_files(patterns: list[str]) -> list[str]:
    return sorted({f for p in patterns for f in glob.glob(p)})


def _empty(files: list[str]) -> list[str]:
    out = []
    for f in files:
        try:
            if os.path.getsize(f) == 0 or not Path(f).read_bytes()[:1 << 16].strip():
                out.append(f)
        except OSError:
            continue
    return out


def _shown(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" (and {len(files) - 3} more)" if len(files) > 3 else "") if files else "the source"


def source_load_error(e: BaseException, where: str, builder: str | None, patterns: list[str], split: str) -> DataError:
    """An exception from load_dataset / load_from_disk -> a DataError with the file and a fix."""
    chain = causes(e)
    files = matched_files(patterns)
    shown = _shown(files)
    text = " | ".join(first_line(c) for c in chain).lower()
    empty = _empty(files)
    if empty and (_named(chain, "StopIteration", "SchemaInferenceError", "EmptyDataError") or len(empty) == len(files)):
        return DataError(f"{_shown(empty)}: the file is empty ({where})", "give a file with at least one row, or remove it from data_files")
    if _named(chain, "StopIteration") and not files:
        return DataError(f"{where}.data_files: no file matches {patterns}", "check the pattern; relative paths start from the config file's folder")
    if (c := _named(chain, "CastError", "DatasetGenerationCastError")) is not None:
        return DataError(f"{where}: the files do not all have the same columns: {' '.join(str(c).split())[:400]}",
                         "give files with the same columns, or one source per shape (data.eval for the other)")
    if (c := _named(chain, "ParserError")) is not None:  # pandas (csv): "... in line 3, saw 3"
        return DataError(f"{shown}: not valid CSV: {first_line(c)} ({where})",
                         "quote fields that contain commas or newlines; for tab-separated files set kwargs: {sep: \"\\t\"}")
    if (c := _named(chain, "UnicodeDecodeError")) is not None:
        return DataError(f"{shown}: not UTF-8 text: {first_line(c)} ({where})",
                         "re-save the file as UTF-8, or name its encoding: kwargs: {encoding: latin-1}")
    if (c := _named(chain, "PermissionError")) is not None:
        return DataError(f"{where}: permission denied: {getattr(c, 'filename', None) or shown}",
                         "make the file readable by this user, or check the credentials in storage_options")
    if AUTH_WORDS.search(text):
        return DataError(f"{where}: access denied by the storage service ({type(chain[-1]).__name__})",
                         "check the credentials in storage_options (tunesmith never prints their values)")
    if (c := _named(chain, "ImportError", "ModuleNotFoundError")) is not None:
        package = re.search(r"install (\w+)", first_line(c), re.I)
        return DataError(f"{where}: {first_line(c)}",
                         f"pip install {package.group(1)} (into .venv)" if package else "install the fsspec backend for this URL")
    if (c := _named(chain, "ConnectionError", "OfflineModeIsEnabled")) is not None:
        return DataError(f"{where}: {first_line(c)}",
                         "builders are json, csv, parquet, text and arrow; a local path must exist; "
                         "a Hub dataset needs the Hub reachable (or its files downloaded and given as data_files)")
    if any(w in text for w in SPLIT_WORDS):
        return DataError(f"{where}.split {split!r}: {first_line(e)}",
                         "files given as data_files form one split named 'train'; slices look like train[:80] or train[10%:]")
    if isinstance(e, TypeError) and "unexpected keyword" in text:
        return DataError(f"{where}.kwargs: {first_line(e)}", "remove the key; kwargs go to load_dataset and its builder")
    if (c := _named(chain, "FileNotFoundError")) is not None:
        return DataError(f"{where}: not found: {first_line(c)}", "check the path or URL; relative paths start from the config file's folder")
    kind = {"parquet": "Parquet", "arrow": "Arrow", "json": "JSON", "csv": "CSV", "text": "text"}.get(builder or "", builder or "data")
    return DataError(f"{shown}: could not read it as {kind}: {type(chain[-1]).__name__}: {first_line(chain[-1])} ({where})",
                     "check that the file is complete and of the type its extension says; --debug shows the library's traceback")


def model_load_error(e: BaseException, ref: str, folder: str) -> ModelError:
    """An exception from from_pretrained on base_model -> a ModelError that names the file."""
    chain = causes(e)
    if (c := _named(chain, "SafetensorError", "HeaderTooLarge", "UnpicklingError")) is not None:
        weights = sorted(glob.glob(os.path.join(folder, "*.safetensors"))) if os.path.isdir(folder) else [folder]
        return ModelError(f"{_shown(weights)}: the weights file is corrupt or cut short ({first_line(c)})",
                          "download or copy the model again; compare its size with the source's")
    if (c := _named(chain, "OutOfMemoryError")) is not None:
        return ModelError(f"base_model {ref!r} does not fit in memory: {first_line(c)}",
                          "use model.method: lora or qlora, a smaller model, or model.dtype: bfloat16")
    return ModelError(f"cannot load base_model {ref!r}: {type(e).__name__}: {first_line(e)}",
                      "use a local folder, a .gguf file, or a Hub id when the Hub is reachable; "
                      "attn_implementation flash_attention_2 needs the flash-attn package")


def lora_target_error(e: BaseException, targets, available: list[str]) -> ModelError:
    return ModelError(f"model.lora.target_modules {targets}: {first_line(e)}",
                      f"this model's linear layers are named {available}; or leave target_modules out for all of them")


def write_oserror(e: BaseException) -> OSError | None:
    """The OSError of a failed write, also when wrapped (torch.save, safetensors say it in text)."""
    for c in causes(e):
        if isinstance(c, OSError) and c.errno in WRITE_ERRNOS:
            return c
        text = str(c)
        if "No space left on device" in text or "PytorchStreamWriter failed writing" in text:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None
