"""YAML -> command-line overrides -> validated Config -> paths resolved against the config's folder."""
from __future__ import annotations

import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.config.dotted import set_dotted
from tunesmith.config.schema import Config
from tunesmith.config.secrets import mask_text, secret_values
from tunesmith.errors import ConfigError


class DuplicateKey(yaml.YAMLError):
    pass


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error naming the
    key and both lines (plain YAML keeps the last value without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(f"key {key!r} is given twice, on line {seen[key]} and on line {line}")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read, override, validate and resolve a config file. Raises ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", "check the path; relative paths start from the working directory")
    try:
        raw = yaml.load(path.read_text(), Loader=StrictLoader) or {}
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e}", "keep one of them: YAML would silently use the last") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")

    from tunesmith.config.compat import translate_other_framework  # local import: compat is optional baggage

    parsed = parse_overrides(overrides or [])
    translated = translate_other_framework(raw, parsed, path)
    if translated.framework != "llm-foundry":  # foundry's overrides name foundry keys; applied before translating
        for item in parsed:
            set_dotted(translated.raw, *item)
    cfg = validate(translated.raw, source=str(path), key_names=translated.key_names)
    secrets = secret_values(translated.raw)
    cfg.seed_compat = [mask_text(note, secrets) for note in translated.notes]  # notes quote translated values
    cfg.compat_source = translated.framework
    cfg.key_names = translated.key_names
    return resolve_paths(cfg, path.parent.resolve())


def validate(raw: dict[str, Any], source: str = "config", key_names: dict[str, str] | None = None) -> Config:
    """`key_names` maps tunesmith keys back to the user's own (translated configs name what the user wrote)."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = [_user_key(_describe(err), key_names or {}) for err in e.errors()]
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from None


def _user_key(line: str, key_names: dict[str, str]) -> str:
    where = line.strip().split(":", 1)[0]
    for ours in sorted(key_names, key=len, reverse=True):
        if where == ours or where.startswith(ours + "."):
            return line.replace(where, key_names[ours] + where[len(ours):], 1)
    return line


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`data.max_length=1024` -> ("data.max_length", 1024); values are parsed as YAML."""
    parsed = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. data.max_length=1024")
        try:
            parsed.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from None
    return parsed


def _describe(err: dict) -> str:
    loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.6)
        tip = f"did you mean '{close[0]}'?" if close else f"valid keys here: {', '.join(sorted(valid))}"
        return f"  {where}: unknown key; {tip}"
    if err["type"] == "missing":
        return f"  {where}: required key is missing"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"  {where}: {err['msg']}{shown}"


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member's name to the location (e.g. 'PromptFormatConfig', 'str').
    return isinstance(part, str) and (part[:1].isupper() or part in {"str", "int", "float", "bool", "list[str]"})


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    return list(model.model_fields) if model else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((m for a in typing.get_args(annotation) if (m := _model_in(a))), None)
    return None


# ---- paths --------------------------------------------------------------------------------------

def resolve_path(value: str | None, base: Path, must_exist: bool = False) -> str | None:
    """Relative local paths are relative to the config's folder; URLs and absolute paths stay."""
    if not value or "://" in value:
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = base / p
    if must_exist and not candidate.exists():
        return value  # a Hub id or builder name, not a path
    return os.path.normpath(candidate)


def _resolve_callable(spec: str | None, base: Path) -> str | None:
    # `file.py:function` is a path; `package.module:function` is an import.
    if spec and ":" in spec:
        target, fn = spec.rsplit(":", 1)
        if target.endswith(".py"):
            return f"{resolve_path(target, base)}:{fn}"
        beside = base / (target.replace(".", "/") + ".py")
        if beside.is_file():  # `preprocessing:fn` next to the config works from any working directory
            return f"{beside}:{fn}"
    return spec


def read_tools_file(path: str, key: str = "data.chat.tools") -> list[dict]:
    """`data.chat.tools: tools.json` -> the list of schemas it holds (read once, so the list, not the
    path, is what rendering uses and what is saved with the model)."""
    import json

    fix = "give a JSON file holding a list of tool schemas ({type: function, function: {name, parameters}})"
    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror or e}", fix) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{key}: {path} is not valid JSON ({e})", fix) from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ConfigError(f"{key}: {path} holds a {type(tools).__name__}, not a list of objects", fix)
    return tools


def resolve_paths(cfg: Config, base: Path) -> Config:
    cfg.base_model = resolve_path(cfg.base_model, base, must_exist=True)
    cfg.tokenizer = resolve_path(cfg.tokenizer, base, must_exist=True)
    if cfg.output_dir:
        cfg.output_dir = resolve_path(cfg.output_dir, base)
    cfg.train_data = resolve_path(cfg.train_data, base)
    cfg.eval_data = resolve_path(cfg.eval_data, base)
    d = cfg.data
    d.output = resolve_path(d.output, base)
    d.preprocessing_fn = _resolve_callable(d.preprocessing_fn, base)
    if isinstance(d.chat.tools, str):
        d.chat.tools = read_tools_file(resolve_path(d.chat.tools, base))
    for src in (d.train, d.eval):
        if src is None:
            continue
        src.path = resolve_path(src.path, base, must_exist=True)
        src.data_dir = resolve_path(src.data_dir, base)
        src.from_disk = resolve_path(src.from_disk, base)
        src.function = _resolve_callable(src.function, base)
        if isinstance(src.data_files, str):
            src.data_files = resolve_path(src.data_files, base)
        elif isinstance(src.data_files, list):
            src.data_files = [resolve_path(f, base) for f in src.data_files]
        elif isinstance(src.data_files, dict):
            src.data_files = {
                k: [resolve_path(f, base) for f in v] if isinstance(v, list) else resolve_path(v, base)
                for k, v in src.data_files.items()
            }
    return cfg
