#!/usr/bin/env bash
# Downloads, into .whl/ (git-ignored), the wheels the GPU machine's image lacks for its Python 3.12
# (manylinux x86-64), at the versions constraints.txt pins. The image already has torch (2.11,
# CUDA 13.0), accelerate, peft, tokenizers, huggingface-hub, pyarrow, pandas, fsspec, xxhash, rich,
# matplotlib, pyyaml, jinja2 (the device tool's KINDS.md). transformers is carried too: the
# image's 5.17 predates the 5.23 tunesmith is tested with. bitsandbytes is slimmed to its CPU and
# CUDA 13.x libraries (43 MB -> ~8 MB): the carry limit is 64 MiB for the whole working tree.
#
#   bash bench/gpu/wheelhouse.sh            # then: du -sh .whl  (prints the total)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
pin() { grep -E "^$1==" constraints.txt | head -1; }
rm -rf .whl && mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
get() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$@" 2>&1 | grep -v '^WARNING' || true
}
# tunesmith's own needs the image lacks, and what they need in turn (pydantic's core, datasets' dill/multiprocess)
get "$(pin transformers)" "$(pin datasets)" "$(pin pydantic)" "$(pin trl)" "$(pin gguf)" \
    pydantic-core==2.50.4 annotated-types typing-inspection typing-extensions "dill<0.4.2" "multiprocess<0.70.20"
# the GPU paths: Liger's Triton kernels, bitsandbytes for QLoRA
get liger-kernel==0.8.5 bitsandbytes==0.50.2
# bitsandbytes ships one library per CUDA and ROCm version; the image runs CUDA 13.0.
bnb=$(ls .whl/bitsandbytes-*.whl)
work=$(mktemp -d)
(cd "$work" && unzip -q "$OLDPWD/$bnb" \
  && find . -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*cpu*' -delete \
  && "$OLDPWD/$PY" - <<'PYEOF'
import csv, glob, os
record = glob.glob("*.dist-info/RECORD")[0]
rows = [r for r in csv.reader(open(record)) if not r[0].endswith(".so") or os.path.exists(r[0])]
csv.writer(open(record, "w", newline="")).writerows(rows)
PYEOF
)
rm "$bnb" && (cd "$work" && zip -qr "$OLDPWD/$bnb" .) && rm -rf "$work"
# The benchmark's tokenizer (SmolLM2's, from the demo model): the GPU machine cannot fetch it.
PYTHONPATH=src "$PY" -c "from tunesmith.demo_model import demo_model_path; from tunesmith.hf import load_tokenizer
load_tokenizer(str(demo_model_path())).save_pretrained('.whl/tokenizer')" >/dev/null
ls -1 .whl
du -sh .whl
