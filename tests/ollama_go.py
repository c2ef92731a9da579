"""Ollama's template engine for tests: the Modelfile TEMPLATE rendered by Go's text/template (the
engine Ollama uses) over the data Ollama passes a chat (fixtures/ollama_template/main.go). Built
once per test session; tests skip, saying why, where no Go toolchain is installed (.ci/run
installs golang-go with apt-get)."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import pytest

SOURCE = Path(__file__).parent / "fixtures" / "ollama_template" / "main.go"


@cache
def renderer() -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (apt-get install golang-go): Ollama templates are rendered with Go's text/template")
    out = Path(tempfile.mkdtemp(prefix="ollama-template-")) / "render"
    env = {"GOCACHE": str(out.parent / "cache"), "GOPATH": str(out.parent / "gopath"), "HOME": str(out.parent),
           "PATH": str(Path(go).parent), "GO111MODULE": "off", "GOFLAGS": ""}
    subprocess.run([go, "build", "-o", str(out), str(SOURCE)], check=True, env=env, capture_output=True)
    return out


def render_ollama(template: str, system: str | None, messages: list[dict]) -> str:
    """What Ollama sends the model for `messages` (system messages, else the Modelfile's SYSTEM, as .System)."""
    systems = [m["content"] for m in messages if m["role"] == "system"]
    data = {"template": template, "system": "\n\n".join(systems) if systems else system or "", "messages": messages}
    proc = subprocess.run([str(renderer())], input=json.dumps(data), capture_output=True, text=True, check=True)
    return proc.stdout
