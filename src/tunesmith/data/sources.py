"""A source spec -> a datasets.Dataset: load_dataset, load_from_disk (local or fsspec), or a callable."""
from __future__ import annotations

import copy
import glob
import importlib
import importlib.util
import json
import sys
import traceback
from pathlib import Path
from typing import Any
from collections.abc import Callable

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.utils import logging as ds_logging

from tunesmith.config.schema import SourceConfig
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.translate_errors import first_line, source_load_error


def load_source(src: SourceConfig, where: str = "data.train") -> Dataset:
    if src.from_disk:
        _require_local(src.from_disk, f"{where}.from_disk")
        try:
            loaded = load_from_disk(src.from_disk, storage_options=_copy(src.storage_options))
        except Exception as e:
            raise source_load_error(e, f"{where}.from_disk", "arrow", [src.from_disk], src.split) from e
        return _pick_split(loaded, src.split, src.from_disk)
    if src.function:
        fn = import_callable(src.function, f"{where}.function")
        try:
            loaded = fn()
        except Exception as e:  # user code: say whose, keep its traceback for --debug
            raise DataError(f"{where}.function {src.function} raised {type(e).__name__}{user_frame(e)}: {first_line(e)}",
                            "fix the function; --debug shows its traceback") from e
        if isinstance(loaded, list):
            loaded = Dataset.from_list(loaded)
        if not isinstance(loaded, (Dataset, DatasetDict)):
            raise DataError(f"{where}.function {src.function} returned {type(loaded).__name__}",
                            "return a datasets.Dataset, a DatasetDict or a list of dicts")
        return _pick_split(loaded, src.split, src.function)
    return _load_dataset(src, where)


def describe_source(src: SourceConfig) -> str:
    """The source in a few words, for messages: its files, folder, function or dataset name."""
    files = src.data_files
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    if isinstance(files, list):
        files = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return files or src.from_disk or src.function or src.data_dir or src.path or "?"


def _load_dataset(src: SourceConfig, where: str) -> Dataset:
    files = _local_files(src.data_files)
    for f in files:
        if not glob.glob(f):
            raise DataError(f"{f}: data file not found ({where}.data_files)",
                            "relative paths start from the config file's folder")
    if src.data_dir:
        _require_local(src.data_dir, f"{where}.data_dir")
    level = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # its parse-error log would duplicate our message
    try:
        return load_dataset(src.path, name=src.name, data_files=src.data_files, data_dir=src.data_dir,
                            split=src.split, storage_options=_copy(src.storage_options), **src.kwargs)
    except Exception as e:  # datasets wraps parse errors; find the bad line ourselves
        bad = _first_bad_json_line(files or _files_in(src.data_dir)) if src.path == "json" else None
        if bad:
            raise DataError(bad, "each line of a JSONL file must be one JSON object") from e
        raise source_load_error(e, where, src.path, files or _files_in(src.data_dir, "*"), src.split) from e
    finally:
        ds_logging.set_verbosity(level)


def _copy(options: dict | None) -> dict | None:
    return copy.deepcopy(options)  # datasets adds its own entries ("hf": {...}) to the dict it is given


def _local_files(data_files: Any) -> list[str]:
    if data_files is None:
        return []
    if isinstance(data_files, str):
        data_files = [data_files]
    if isinstance(data_files, dict):
        data_files = [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
    return [f for f in data_files if "://" not in f]


def _files_in(folder: str | None, pattern: str = "*.json*") -> list[str]:
    return sorted(str(p) for p in Path(folder).glob(pattern) if p.is_file()) if folder and "://" not in folder else []


def _first_bad_json_line(files: list[str]) -> str | None:
    for pattern in files:
        for f in sorted(glob.glob(pattern)):
            if not f.endswith((".jsonl", ".json")):
                continue
            with open(f, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            if f.endswith(".json") and text.lstrip().startswith("["):
                try:
                    json.loads(text)
                except json.JSONDecodeError as e:
                    return f"{f}: not valid JSON at line {e.lineno}: {e.msg}"
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    return f"{f}: line {lineno} is not valid JSON: {e.msg} (column {e.colno})"
                if not isinstance(obj, dict):
                    return f"{f}: line {lineno} is a JSON {type(obj).__name__}, not an object"
    return None


def _require_local(path: str, key: str) -> None:
    if "://" not in path and not Path(path).exists():
        raise DataError(f"{path}: not found ({key})", "relative paths start from the config file's folder")


def _pick_split(loaded: Dataset | DatasetDict, split: str, origin: str) -> Dataset:
    if isinstance(loaded, DatasetDict):
        if split not in loaded:
            raise DataError(f"{origin}: has no split {split!r}; it has {sorted(loaded)}", "set `split:` in the source")
        return loaded[split]
    return loaded


def import_callable(spec: str, key: str) -> Callable:
    """`package.module:function` (importable) or `path/to/file.py:function`, loaded in this one
    guarded place: a syntax error, an exception while importing, a missing or non-callable name
    each end in one message with the file, line and function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(f"{key}: {spec!r} is not of the form module:function or file.py:function")
    try:
        module = _load_module(target, key)
    except SyntaxError as e:
        raise ConfigError(f"{key}: {e.filename}, line {e.lineno}: syntax error: {e.msg}",
                          f"fix the file; then {name} can be loaded") from None
    except ModuleNotFoundError as e:
        if e.name and (target == e.name or target.startswith(e.name + ".")):
            raise ConfigError(f"{key}: cannot import {target!r}: {e}",
                              "use path/to/file.py:function, or put the module on PYTHONPATH") from None
        raise ConfigError(f"{key}: importing {target} failed{user_frame(e)}: {e}",
                          f"install {e.name} (into .venv), or remove the import") from None
    except TunesmithError:
        raise
    except Exception as e:  # anything the user's module raises while it is imported
        raise ConfigError(f"{key}: importing {target} raised {type(e).__name__}{user_frame(e)}: {e}",
                          "fix the module: it runs when tunesmith loads it") from None
    fn = getattr(module, name, None)
    if fn is None:
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:8]
        raise ConfigError(f"{key}: {target} has no function {name!r}",
                          f"functions defined there: {', '.join(defined) or 'none'}")
    if not callable(fn):
        raise ConfigError(f"{key}: {target}:{name} is a {type(fn).__name__}, not a function")
    return fn


def _load_module(target: str, key: str):
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = Path(target)
    if not path.is_file():
        raise DataError(f"{target}: file not found ({key})", "relative paths start from the config file's folder")
    module_name = f"tunesmith_user_{path.stem}"
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) != str(path):
        sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # worker processes find it when unpickling
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]  # a half-run module is not cached
            raise
    return module


_PACKAGE = str(Path(__file__).resolve().parents[1])  # tunesmith's own frames are not the user's


def user_frame(e: BaseException) -> str:
    """' (file, line N)' of the innermost frame of the user's code in the traceback, '' if none."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(("<frozen", _PACKAGE)) and "importlib" not in f.filename]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
