"""Every path a user names, checked before any work: inputs exist and can be read, outputs can be
created and written (a probe file in the nearest existing folder, removed at once). Each problem
names the key or flag that gave the path; nothing is created by the check."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tunesmith.errors import ConfigError


def writable_folder(path: str | os.PathLike, key: str, named: str | os.PathLike | None = None) -> None:
    """`path` is a folder tunesmith may create and write in (it need not exist yet). `named`: the
    path the user gave, when it is a file inside `path`."""
    target = Path(path).expanduser().absolute()
    path = named or path
    for folder in (target, *target.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            where = "is a file" if str(folder) == str(path) else f"cannot be created: {folder} is a file, not a folder"
            raise ConfigError(f"{key}: {path} {where}", "choose a folder path, or move the file away")
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tunesmith-probe-"):
                pass
        except OSError as e:
            raise ConfigError(f"{key}: {path} cannot be written: {folder}: {e.strerror or e}",
                              "choose a location you can write to, or fix its permissions") from None
        return


def writable_file(path: str | os.PathLike, key: str) -> None:
    """`path` is a file tunesmith may create or replace."""
    if Path(path).is_dir():
        raise ConfigError(f"{key}: {path} is a folder, not a file", "give a file name")
    writable_folder(Path(path).expanduser().absolute().parent, key, named=path)


def readable_file(path: str | os.PathLike, key: str) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{key}: {path}: file not found", "check the path; relative paths start from the working directory")
    if p.is_dir():
        raise ConfigError(f"{key}: {path} is a folder, not a file")
    try:
        p.open("rb").close()
    except OSError as e:
        raise ConfigError(f"{key}: {path} cannot be read: {e.strerror or e}") from None


def existing_folder(path: str | os.PathLike, key: str) -> None:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{key}: {path}: " + ("not a folder" if p.exists() else "folder not found"),
                          "point at a model folder (final/, merged/) or a run's output")


def check_command_paths(command: str, args, output_dir: str | None, data_dir: str | None) -> None:
    """The paths `command` will read and write, from the config (`output_dir`, `data_dir`: None
    without a config) and the flags."""
    if output_dir and command in ("check", "prep", "train", "run", "eval", "merge", "export", "report"):
        writable_folder(output_dir, "output_dir")
    if data_dir and command in ("check", "prep", "run"):
        writable_folder(data_dir, "data.output")
    for flag in ("model", "adapter", "folder"):
        value = getattr(args, flag, None)
        if value and command in ("eval", "generate", "chat", "merge", "export", "push"):
            existing_folder(value, f"--{flag}")
    if getattr(args, "prompts", None) not in (None, "-"):
        readable_file(args.prompts, "--prompts")
    if getattr(args, "data", None) and command == "eval":
        readable_file(args.data, "--data")
    if getattr(args, "tools", None):
        readable_file(args.tools, "--tools")
    if getattr(args, "out", None):
        (writable_file if command == "report" else writable_folder)(args.out, "--out")
