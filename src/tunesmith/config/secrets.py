"""Credentials never reach files or logs: find them in a config and mask them.

A secret is any value under `storage_options` (fsspec credentials: S3 key and secret, GCS
token, ...), any string under a key named like a credential (`hub_token`, `api_key`,
`password`, ...), and the password or signature inside a URL. Masked values become MASK and
their dotted paths are listed, so a reader knows which values to supply to reproduce the run.
"""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MASK = "***"
SECRET_WORDS = {"token", "key", "secret", "password", "passwd", "pwd", "credential", "credentials", "apikey", "auth",
                "sig", "signature", "sas"}
SECRET_SECTIONS = {"storage_options"}  # every value below is masked
_URL_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@]*):(?P<password>[^@/]+)@", re.I)


def is_secret_key(name: str) -> bool:
    """`hub_token`, `aws_secret_access_key`, `key`, `api-key`: a word of the name is a credential
    word. `include_tokens_per_second` or `max_new_tokens` are not (whole words only)."""
    words = [w for w in re.split(r"[_\-.\s]+|(?<=[a-z])(?=[A-Z])", str(name)) if w]
    return any(w.lower() in SECRET_WORDS for w in words)


def mask(config: Any, path: str = "") -> tuple[Any, list[str]]:
    """A copy of `config` (dicts, lists, scalars) with secrets replaced by MASK, and their paths."""
    masked_paths: list[str] = []

    def walk(node: Any, where: str, secret: bool) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k),
                            secret or str(k) in SECRET_SECTIONS or (is_secret_key(k) and _is_value(v)))
                    for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{where}[{i}]", secret) for i, v in enumerate(node)]
        if secret and _is_value(node):
            masked_paths.append(where)
            return MASK
        if isinstance(node, str) and (cleaned := mask_url(node)) != node:
            masked_paths.append(where)
            return cleaned
        return node

    return walk(config, path, False), masked_paths


def _is_value(v: Any) -> bool:
    """What can hold a credential: strings and numbers, or containers of them; not flags or nulls."""
    return v is not None and not isinstance(v, bool) and (not isinstance(v, str) or v != "")


def mask_url(text: str) -> str:
    """`s3://user:pass@bucket/x` -> `s3://user:***@bucket/x`; `?sig=...&token=...` query values masked."""
    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    parts = urlsplit(text)
    if not parts.query:
        return text
    query = "&".join(f"{k}={MASK if is_secret_key(k) else v}" for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return parts._replace(query=query).geturl()


def secret_values(config: Any) -> list[str]:
    """The text of every value mask() hides (longest first, so a value is masked before its parts)."""
    found: set[str] = set()

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, secret or str(k) in SECRET_SECTIONS or is_secret_key(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, secret)
        elif secret and _is_value(node):
            found.add(str(node))
        elif isinstance(node, str) and "://" in node:
            m = _URL_USERINFO.match(node)
            if m:
                found.add(m["password"])
            found.update(v for k, v in parse_qsl(urlsplit(node).query) if is_secret_key(k) and v)

    walk(config, False)
    return sorted((v for v in found if len(v) >= 4), key=len, reverse=True)  # shorter ones would mask ordinary text


def mask_text(text: str, values: list[str]) -> str:
    """`text` with each of `values` (from secret_values) replaced by MASK."""
    for v in values:
        text = text.replace(v, MASK)
    return text
